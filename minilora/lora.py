"""LoRA for any PyTorch model: wrap Linear layers, train only A and B, merge, save adapters.

The companion of chapter 04. One class and a handful of verbs:

- ``LoRALinear(base, r, alpha)`` wraps a frozen linear layer ``base`` (kept as ``self.base``) and
  adds two small trainable matrices: ``lora_A`` (r × in_features) and ``lora_B``
  (out_features × r, zeros). Its output is ``base(x) + scaling · dropout(x) · Aᵀ · Bᵀ`` with
  ``scaling = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA). Because B starts at zero, a freshly
  wrapped model computes exactly what the pretrained one did.
- ``add_lora(model, targets, ...)`` swaps the chosen Linear layers for ``LoRALinear`` and freezes
  everything else; ``merge_lora`` folds ``ΔW = scaling · B·A`` back into plain Linear layers (no
  inference overhead); ``disable_lora`` is a context manager that runs the base model;
  ``lora_state_dict``/``save_adapter``/``load_adapter`` move adapters to and from safetensors.
- ``count_parameters`` / ``trainable_report`` answer "how much am I really training?".

Parents that read ``.weight`` directly. Some modules never call their Linear child: PyTorch's
``nn.MultiheadAttention`` hands ``out_proj.weight`` and ``out_proj.bias`` straight to
``F.multi_head_attention_forward``, and ``nn.TransformerEncoderLayer``'s fast path (eval mode, no
grad) does the same with ``linear1``/``linear2``. A wrapper whose ``forward`` is never called
would be a LoRA that silently does nothing. So ``LoRALinear.weight`` is a property returning the
*adapted* weight ``W0 + scaling · B·A`` (and ``.bias`` the base bias): a parent that reads the
weight gets the same function as one that calls ``forward``. Only this property forms B·A; the
forward pass never does (that is the point of LoRA: two thin matmuls instead of a d × k one).

Bases other than ``nn.Linear``. A base may be any module with ``in_features``, ``out_features``
and a ``forward`` whose class is listed in ``LINEAR_TYPES`` (the NF4 chapter appends its frozen
4-bit ``Linear4bit`` there). Such a base may offer two optional hooks:
``base.dequantize()`` → the (out, in) float weight (used by ``.weight``), and
``base.merge_delta(delta)`` → add ``delta`` to its stored weight (used by ``merge``/``unmerge``;
without it merging raises a clear error).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

# Classes LoRALinear may wrap. Other chapters extend it (``LINEAR_TYPES.append(Linear4bit)``).
LINEAR_TYPES: list[type[nn.Module]] = [nn.Linear]

INITS = ("gaussian", "kaiming")
ADAPTER_FORMAT = "minilora-adapter-v1"


# ----------------------------------------------------------------------------------------------
# Checking hyper-parameters (shared by LoRALinear and add_lora, so both fail the same way)
# ----------------------------------------------------------------------------------------------
def check_hyperparameters(r, alpha, dropout=0.0, init="gaussian", use_rslora=False) -> None:
    """Raise ValueError naming the problem if r, alpha, dropout, init or use_rslora is invalid."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r must be an integer >= 1 (the rank of ΔW = B·A), got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive number (scaling = alpha / r), got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1) (1 would drop every input), got {dropout!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not isinstance(use_rslora, bool):
        raise ValueError(f"use_rslora must be True or False, got {use_rslora!r}")


def compute_scaling(r: int, alpha: float, use_rslora: bool = False) -> float:
    """The factor in front of B·A: alpha / r (the paper), or alpha / sqrt(r) (rsLoRA)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def is_linear_like(module: nn.Module) -> bool:
    """True for modules LoRALinear can wrap: instances of a class in ``LINEAR_TYPES``."""
    return isinstance(module, tuple(LINEAR_TYPES)) and not isinstance(module, LoRALinear)


# ----------------------------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------------------------
class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: y = base(x) + s · x·Aᵀ·Bᵀ.

    ``init="gaussian"`` draws A ~ N(0, σ²) with σ = 1/r, the paper's "random Gaussian" with the
    standard deviation PEFT's ``init_lora_weights="gaussian"`` uses; ``init="kaiming"`` is PEFT's
    default, Kaiming-uniform with a = √5 (the same init as ``nn.Linear``'s weight). B is zero
    either way, so ΔW = 0 at the start. A and B are created with the base weight's dtype/device
    and drawn from PyTorch's global generator (seed it for reproducible adapters).
    """

    def __init__(
        self,
        base: nn.Module,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        init: str = "gaussian",
        use_rslora: bool = False,
    ):
        check_hyperparameters(r, alpha, dropout, init, use_rslora)
        if isinstance(base, LoRALinear):
            raise ValueError("this layer already has LoRA; wrapping it twice would stack adapters")
        if not is_linear_like(base):
            names = ", ".join(t.__name__ for t in LINEAR_TYPES)
            raise ValueError(f"LoRALinear wraps linear layers ({names}), got {type(base).__name__}")
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)  # the pretrained weights stay frozen
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.r, self.alpha, self.init, self.use_rslora = r, alpha, init, use_rslora
        self.dropout_p = float(dropout)
        self.scaling = compute_scaling(r, alpha, use_rslora)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        dtype, device = _float_dtype_and_device(base)
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, dtype=dtype, device=device))
        self.reset_lora_parameters()
        self.merged = False  # True while ΔW sits inside the base weight
        self.disabled = False  # True inside disable_lora(): behave like the base
        self.train(base.training)  # a wrapper added to a model in eval mode stays in eval mode

    def reset_lora_parameters(self) -> None:
        """Draw A afresh and zero B, so the layer computes exactly what ``base`` computes."""
        with torch.no_grad():
            if self.init == "gaussian":
                nn.init.normal_(self.lora_A, mean=0.0, std=1.0 / self.r)
            else:
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            self.lora_B.zero_()

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scaling · B·A, shape (out_features, in_features), the update LoRA has learned."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged or self.disabled:
            return y
        # Two thin matmuls, (n, k)·(k, r) then (n, r)·(r, d): never the d × k matrix B·A.
        h = self.dropout(x.to(self.lora_A.dtype)) @ self.lora_A.T
        return y + (h @ self.lora_B.T * self.scaling).to(y.dtype)

    # What a parent reading the weight directly sees (see the module docstring).
    @property
    def weight(self) -> torch.Tensor:
        w0 = _base_weight(self.base)
        if self.merged or self.disabled:
            return w0
        return w0 + self.delta_weight().to(w0.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base, "bias", None)

    def merge(self) -> None:
        """Add ΔW into the base weight; the forward pass then costs what the base costs."""
        if self.merged:
            raise ValueError("this LoRA layer is already merged; merging twice would add ΔW twice")
        _add_to_base_weight(self.base, self.delta_weight().detach())
        self.merged = True

    def unmerge(self) -> None:
        """Subtract ΔW from the base weight again (exact up to float rounding)."""
        if not self.merged:
            raise ValueError("this LoRA layer is not merged; there is nothing to unmerge")
        _add_to_base_weight(self.base, -self.delta_weight().detach())
        self.merged = False

    def extra_repr(self) -> str:
        rule = "alpha/sqrt(r)" if self.use_rslora else "alpha/r"
        return (
            f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g} ({rule}), "
            f"dropout={self.dropout_p}, merged={self.merged}"
        )


def _float_dtype_and_device(base: nn.Module) -> tuple[torch.dtype, torch.device]:
    """A and B live where the base weight lives, in its dtype (float32 for a quantized base)."""
    weight = getattr(base, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.is_floating_point():
        return weight.dtype, weight.device
    tensors = list(base.parameters()) + list(base.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    return getattr(base, "compute_dtype", torch.float32), device


def _base_weight(base: nn.Module) -> torch.Tensor:
    if isinstance(base, nn.Linear):
        return base.weight
    if hasattr(base, "dequantize"):
        return base.dequantize()
    raise AttributeError(f"{type(base).__name__} has neither .weight nor .dequantize()")


def _add_to_base_weight(base: nn.Module, delta: torch.Tensor) -> None:
    if isinstance(base, nn.Linear):
        with torch.no_grad():
            base.weight += delta.to(base.weight.dtype)
    elif hasattr(base, "merge_delta"):
        base.merge_delta(delta)
    else:
        raise ValueError(
            f"cannot merge into a {type(base).__name__}: it is not an nn.Linear and has no "
            "merge_delta(delta) method"
        )


# ----------------------------------------------------------------------------------------------
# Choosing layers by name
# ----------------------------------------------------------------------------------------------
def _as_target_list(target_modules) -> list[str | re.Pattern]:
    if isinstance(target_modules, (str, re.Pattern)):
        return [target_modules]
    targets = list(target_modules) if isinstance(target_modules, Iterable) else None
    if not targets or not all(isinstance(t, (str, re.Pattern)) for t in targets):
        raise ValueError(
            "target_modules must be a name, a re.compile(...) pattern, or a non-empty list of "
            f"them, got {target_modules!r}"
        )
    return targets


def name_matches(name: str, target: str | re.Pattern) -> bool:
    """Does the qualified module name ``name`` match ``target``?

    A string matches the exact name or a name suffix at a dot boundary: ``"query"`` matches
    ``"encoder.layer.0.attention.self.query"`` but not ``"my_query"``; ``"self.query"`` works too.
    A compiled regex (``re.compile(r"layer\\.[0-2]\\..*query")``) must match the whole name.
    """
    if isinstance(target, re.Pattern):
        return target.fullmatch(name) is not None
    return name == target or name.endswith("." + target)


def _lora_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def _inside_lora(name: str, lora_names: list[str]) -> bool:
    """True for the wrapped ``.base`` (and anything below) of a LoRALinear."""
    return any(name.startswith(prefix + ".") for prefix in lora_names if prefix)


def _linear_names(model: nn.Module) -> list[str]:
    """Names of the linear layers (those already wrapped are marked "(has LoRA)")."""
    lora = _lora_names(model)
    return [
        n if is_linear_like(m) else f"{n} (has LoRA)"
        for n, m in model.named_modules()
        if (is_linear_like(m) and not _inside_lora(n, lora)) or isinstance(m, LoRALinear)
    ]


def find_targets(model: nn.Module, target_modules) -> list[str]:
    """The qualified names of the layers ``add_lora`` would wrap; ValueError if a target is bad.

    Every target must match at least one module (a typo must not silently adapt nothing), and
    every match must be a linear layer without LoRA yet.
    """
    targets = _as_target_list(target_modules)
    lora = _lora_names(model)
    modules = {n: m for n, m in model.named_modules() if n and not _inside_lora(n, lora)}
    linear = _linear_names(model)
    chosen: list[str] = []
    for target in targets:
        hits = [n for n in modules if name_matches(n, target)]
        if not hits:
            raise ValueError(
                f"target {_show(target)} matches no module. Linear layers in this model: "
                f"{_short_list(linear)}"
            )
        for name in hits:
            module = modules[name]
            if isinstance(module, LoRALinear):
                raise ValueError(f"{name!r} already has LoRA; call add_lora once per layer")
            if not is_linear_like(module):
                hint = ""
                if isinstance(module, nn.MultiheadAttention):
                    out_proj = name + ".out_proj"
                    hint = (
                        " (nn.MultiheadAttention keeps q, k, v in one raw Parameter, "
                        f"in_proj_weight; you can adapt its output projection {out_proj!r})"
                    )
                raise ValueError(
                    f"target {_show(target)} matches {name!r}, a {type(module).__name__}, not a "
                    f"Linear layer{hint}. Linear layers in this model: {_short_list(linear)}"
                )
            if name not in chosen:
                chosen.append(name)
    return chosen


def _show(target) -> str:
    return f"re.compile({target.pattern!r})" if isinstance(target, re.Pattern) else repr(target)


def _short_list(names: list[str], limit: int = 30) -> str:
    if not names:
        return "(none)"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRALinear in ``model`` by qualified name (the names adapters are saved under)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def _freeze_all_but_lora(model: nn.Module) -> None:
    adapters = {id(p) for m in lora_layers(model).values() for p in (m.lora_A, m.lora_B)}
    for p in model.parameters():
        p.requires_grad_(id(p) in adapters)


# ----------------------------------------------------------------------------------------------
# The model-level verbs
# ----------------------------------------------------------------------------------------------
def add_lora(
    model: nn.Module,
    target_modules,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    init: str = "gaussian",
    use_rslora: bool = False,
) -> nn.Module:
    """Wrap the Linear layers named by ``target_modules`` in LoRALinear and freeze the rest.

    ``target_modules``: a name, a compiled regex, or a list of them (see ``name_matches``).
    Everything is checked before the model is touched: on a ValueError the model is unchanged.
    Afterwards only ``lora_A``/``lora_B`` require grad (unfreeze a new head yourself). The model
    is changed in place and returned.
    """
    check_hyperparameters(r, alpha, dropout, init, use_rslora)
    if isinstance(model, LoRALinear) or is_linear_like(model):
        raise ValueError(
            "add_lora adapts layers inside a model; wrap a single layer with LoRALinear"
        )
    names = find_targets(model, target_modules)
    for name in names:  # all checks passed: now mutate
        _set_submodule(
            model, name, LoRALinear(model.get_submodule(name), r, alpha, dropout, init, use_rslora)
        )
    _freeze_all_but_lora(model)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain base layer back (in place).

    The result has no LoRALinear left, computes the same function, and costs no extra time.
    The merged weights stay frozen (``requires_grad=False``), as the base weights were.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("this model has no LoRA layers (already merged, or add_lora never called)")
    for name, layer in layers.items():
        if not layer.merged:
            layer.merge()
        if name:
            _set_submodule(model, name, layer.base)
        else:  # the model itself is one LoRALinear
            return layer.base
    return model


@contextlib.contextmanager
def disable_lora(model: nn.Module) -> Iterator[nn.Module]:
    """Inside ``with disable_lora(model):`` the model computes what its base computes."""
    layers = list(lora_layers(model).values())
    if not layers:
        raise ValueError("this model has no LoRA layers to disable")
    if any(layer.merged for layer in layers):
        raise ValueError("cannot disable a merged LoRA layer; call layer.unmerge() first")
    before = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, was in zip(layers, before, strict=True):
            layer.disabled = was


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (``<layer>.lora_A``, ``<layer>.lora_B``), detached copies."""
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if k.endswith((".lora_A", ".lora_B")) or k in ("lora_A", "lora_B")
    }


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) number of parameter elements, each shared Parameter counted once.

    A linear-like base that keeps its weight outside Parameters (a 4-bit base stores packed codes
    in buffers) still holds in × out frozen weights: they are counted in the total, so a QLoRA
    model reports the parameters of the model, not the bytes of its storage (peft#1020).
    """
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    for module in model.modules():
        if is_linear_like(module) and not isinstance(getattr(module, "weight", None), nn.Parameter):
            total += module.in_features * module.out_features
    return trainable, total


def trainable_report(model: nn.Module) -> str:
    """'trainable params: 1,234 || all params: 5,678 || trainable%: 21.7330' (PEFT's format)."""
    trainable, total = count_parameters(model)
    percent = 100.0 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {percent:.4f}"


# ----------------------------------------------------------------------------------------------
# Adapters on disk: only A and B, in safetensors, with the config that gives them meaning
# ----------------------------------------------------------------------------------------------
def _adapter_config(layers: dict[str, LoRALinear]) -> dict:
    """The hyper-parameters every layer shares; adapters with mixed settings are refused."""
    settings = {(m.r, m.alpha, m.use_rslora, m.dropout_p, m.init) for m in layers.values()}
    if len(settings) > 1:
        raise ValueError(
            "the LoRA layers use different r/alpha/dropout/init settings; an adapter file holds "
            f"one setting: {sorted(settings, key=str)}"
        )
    r, alpha, use_rslora, dropout, init = settings.pop()
    from minilora import __version__

    return {
        "r": r,
        "alpha": alpha,
        "use_rslora": use_rslora,
        "scaling_rule": "alpha/sqrt(r)" if use_rslora else "alpha/r",
        "scaling": compute_scaling(r, alpha, use_rslora),
        "dropout": dropout,
        "init": init,
        "targets": sorted(layers),
        "minilora_version": __version__,
    }


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, shapes and bytes: a flipped byte in the file is caught on load."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write only the adapter tensors of ``model`` to a safetensors file; returns the path.

    The file's metadata holds the config (r, alpha, scaling rule, dropout, init, the adapted
    layer names, the minilora version) and a checksum of the tensors.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("this model has no LoRA layers to save (call add_lora first)")
    config = _adapter_config(layers)
    tensors = {k: v.contiguous() for k, v in lora_state_dict(model).items()}
    metadata = {
        "format": ADAPTER_FORMAT,
        "config": json.dumps(config),
        "sha256": _checksum(tensors),
    }
    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read and check an adapter file: (tensors, config). ValueError if it is corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no adapter file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for bad headers/lengths
        raise ValueError(
            f"{path} is not a readable safetensors file (corrupt or truncated?): {err}"
        ) from err
    if metadata.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{path} is not a minilora adapter (metadata format is missing)")
    try:
        config = json.loads(metadata["config"])
        check_hyperparameters(
            config["r"], config["alpha"], config["dropout"], config["init"], config["use_rslora"]
        )
        targets = list(config["targets"])
    except (KeyError, TypeError, json.JSONDecodeError, ValueError) as err:
        raise ValueError(f"{path} has a broken adapter config: {err}") from err
    if metadata.get("sha256") != _checksum(tensors):
        raise ValueError(f"{path}: the tensors do not match their checksum (the file is corrupt)")
    expected = {f"{t}.{p}" for t in targets for p in ("lora_A", "lora_B")}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(f"{path}: adapter tensors missing {missing}, unexpected {extra}")
    return tensors, config


def load_adapter(model: nn.Module, path: str | Path, trainable: bool = True) -> nn.Module:
    """Load an adapter file into ``model`` (in place) and return the model.

    If ``model`` has no LoRA layers yet, they are added with the file's config; if it has them
    (e.g. another customer's adapter), they must be the same layers with the same r, alpha and
    scaling rule, and their A and B are overwritten. Every name, shape and setting is checked
    before anything changes: on a ValueError the model is untouched.

    ``trainable=True`` (the default) leaves the loaded A and B requiring grad, so training can
    continue right away; PEFT loads adapters frozen by default, a frequent surprise (peft#282).
    Pass ``trainable=False`` for inference.
    """
    tensors, config = read_adapter(path)
    r, targets = config["r"], config["targets"]
    existing = lora_layers(model)
    if existing:
        if sorted(existing) != sorted(targets):
            raise ValueError(
                f"{path} adapts {targets}, but this model has LoRA on {sorted(existing)}"
            )
        for name, layer in existing.items():
            theirs = (config["r"], config["alpha"], config["use_rslora"])
            ours = (layer.r, layer.alpha, layer.use_rslora)
            if theirs != ours:
                raise ValueError(
                    f"{path} was saved with (r, alpha, use_rslora) = {theirs}, but layer "
                    f"{name!r} has {ours}"
                )
            if layer.merged:
                raise ValueError(f"layer {name!r} is merged; unmerge it before loading new A, B")
    modules = dict(model.named_modules())
    for name in targets:
        layer = existing.get(name, modules.get(name))
        if layer is None or not (isinstance(layer, LoRALinear) or is_linear_like(layer)):
            raise ValueError(f"{path} adapts {name!r}, which is not a Linear layer of this model")
        shapes = {
            "lora_A": (r, layer.in_features),
            "lora_B": (layer.out_features, r),
        }
        for part, shape in shapes.items():
            got = tuple(tensors[f"{name}.{part}"].shape)
            if got != shape:
                raise ValueError(
                    f"{path}: {name}.{part} has shape {got}, this model needs {shape} (r={r})"
                )
            if not tensors[f"{name}.{part}"].is_floating_point():
                raise ValueError(f"{path}: {name}.{part} is not a float tensor")
    # Every check passed: now change the model.
    if not existing:
        exact = [re.compile(re.escape(name)) for name in targets]
        add_lora(
            model,
            exact,
            r,
            config["alpha"],
            config["dropout"],
            config["init"],
            config["use_rslora"],
        )
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            layer.lora_A.copy_(tensors[f"{name}.lora_A"])
            layer.lora_B.copy_(tensors[f"{name}.lora_B"])
            layer.lora_A.requires_grad_(trainable)
            layer.lora_B.requires_grad_(trainable)
    return model
