"""LoRA for any PyTorch model: wrap linear layers, train only A and B, merge, count.

The companion of chapter 04. One class and a handful of verbs:

- ``LoRALinear(base, r, alpha)`` wraps a frozen linear layer ``base`` (kept as ``self.base``) and
  adds two small trainable matrices: ``lora_A`` (r × in_features) and ``lora_B``
  (out_features × r, zeros). Its output is ``base(x) + scaling · dropout(x) · Aᵀ · Bᵀ`` with
  ``scaling = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA). Because B starts at zero, a freshly
  wrapped model computes exactly what the pretrained one did.
- ``add_lora(model, targets, ...)`` swaps the chosen layers for ``LoRALinear`` and freezes
  everything else; ``merge_lora`` folds ``ΔW = scaling · B·A`` back into plain layers (no
  inference overhead); ``disable_lora`` is a context manager that runs the base model.
- ``lora_state_dict``, ``count_parameters`` / ``trainable_report`` answer "what am I training?".
  Adapter files live in ``minilora.adapters``.

Which layers can be a base. A layer is recognised by what it offers, not by its class:

- ``in_features``, ``out_features`` and a 2-D float ``weight`` of shape (out, in): ``nn.Linear``
  and its subclasses;
- ``nx``, ``nf`` and a 2-D float ``weight`` of shape (in, out) = (nx, nf): the transposed linear
  layer of GPT-2 (transformers' ``Conv1D``), merged through ``weight.T``;
- ``in_features``, ``out_features`` and a ``dequantize()`` method returning the (out, in) float
  weight: a packed, frozen base such as ``minilora.nf4.Linear4bit``. Merging into it needs its
  ``merge_delta(delta)`` method.

Parents that read ``.weight`` directly. Some modules never call their linear child: PyTorch's
``nn.MultiheadAttention`` hands ``out_proj.weight`` and ``out_proj.bias`` straight to
``F.multi_head_attention_forward``, and ``nn.TransformerEncoderLayer``'s fast path (eval mode, no
grad) does the same with ``linear1``/``linear2``. A wrapper whose ``forward`` is never called
would be a LoRA that silently does nothing. So ``LoRALinear.weight`` is a property returning the
*adapted* weight ``W0 + scaling · B·A`` (and ``.bias`` the base bias): a parent that reads the
weight gets the same function as one that calls ``forward``. Only this property forms B·A; the
forward pass never does (that is the point of LoRA: two thin matmuls instead of a d × k one).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator

import torch
from torch import nn

from minilora.targets import as_targets, name_matches, select, show

INITS = ("gaussian", "kaiming", "peft_gaussian")


# ----------------------------------------------------------------------------------------------
# Checking hyper-parameters (shared by LoRALinear and add_lora, so both fail the same way)
# ----------------------------------------------------------------------------------------------
def check_hyperparameters(r, alpha, dropout=0.0, init="gaussian", use_rslora=False):
    """Return (r, alpha) as int and float; ValueError naming the problem if anything is invalid.

    NumPy scalars from a sweep (``np.int64(8)``, ``np.float32(16)``) are numbers too.
    """
    if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 1:
        raise ValueError(f"r must be an integer >= 1 (the rank of ΔW = B·A), got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive number (scaling = alpha / r), got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1) (1 would drop every input), got {dropout!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not isinstance(use_rslora, bool):
        raise ValueError(f"use_rslora must be True or False, got {use_rslora!r}")
    return int(r), float(alpha)


def compute_scaling(r: int, alpha: float, use_rslora: bool = False) -> float:
    """The factor in front of B·A: alpha / r (the paper), or alpha / sqrt(r) (rsLoRA)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def _ints(*values) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def base_features(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) if LoRALinear can wrap ``module``, else None (see above)."""
    if isinstance(module, LoRALinear):
        return None
    dims = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if _ints(*dims) and callable(getattr(module, "dequantize", None)):
        return dims
    w = getattr(module, "weight", None)
    if not (isinstance(w, torch.Tensor) and w.dim() == 2 and w.is_floating_point()):
        return None
    if _ints(*dims) and tuple(w.shape) == dims[::-1]:
        return dims
    nx, nf = getattr(module, "nx", None), getattr(module, "nf", None)  # transformers' Conv1D
    if _ints(nx, nf) and tuple(w.shape) == (nx, nf):
        return nx, nf
    return None


def is_linear_like(module: nn.Module) -> bool:
    """True for the layers LoRALinear can wrap (recognised by what they offer)."""
    return base_features(module) is not None


def _is_packed(base: nn.Module) -> bool:
    return callable(getattr(base, "dequantize", None))


def _is_transposed(base: nn.Module) -> bool:
    return not _is_packed(base) and getattr(base, "in_features", None) is None


# ----------------------------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------------------------
class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: y = base(x) + s · x·Aᵀ·Bᵀ.

    ``init="gaussian"`` (the default) draws A ~ N(0, 1/k) with k = in_features: the paper's
    "random Gaussian", scaled like the layer's input so each entry of x·Aᵀ is of the size of one
    input feature whatever r is (chapter 02's rank-invariance argument; the NumPy layer uses the
    same law). ``init="kaiming"`` is PEFT's default, Kaiming-uniform with a = √5 (the init of
    ``nn.Linear``'s weight, A ~ U(-1/√k, 1/√k)). ``init="peft_gaussian"`` is PEFT's
    ``init_lora_weights="gaussian"``, A ~ N(0, 1/r²): a different law, whose first Adam step
    shrinks as r grows. B is zero in every case, so ΔW = 0 at the start.
    A and B are created with the base weight's dtype/device and drawn from PyTorch's global
    generator (seed it for reproducible adapters).
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
        r, alpha = check_hyperparameters(r, alpha, dropout, init, use_rslora)
        if isinstance(base, LoRALinear):
            raise ValueError("this layer already has LoRA; wrapping it twice would stack adapters")
        if not is_linear_like(base):
            raise ValueError(
                f"LoRALinear wraps linear layers (in_features/out_features and a 2-D float "
                f"weight, or a dequantize() method), got {type(base).__name__}"
            )
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)  # the pretrained weights stay frozen
        self.in_features, self.out_features = base_features(base)
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
                nn.init.normal_(self.lora_A, mean=0.0, std=1.0 / math.sqrt(self.in_features))
            elif self.init == "peft_gaussian":
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
        """The adapted weight, in the base's own layout ((in, out) for a Conv1D base)."""
        w0 = self.base.dequantize() if _is_packed(self.base) else self.base.weight
        if self.merged or self.disabled:
            return w0
        delta = self.delta_weight().to(w0.dtype)
        return w0 + (delta.T if _is_transposed(self.base) else delta)

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
    if not _is_packed(base) and isinstance(weight, torch.Tensor):
        return weight.dtype, weight.device
    tensors = list(base.parameters()) + list(base.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    return getattr(base, "compute_dtype", torch.float32), device


def _add_to_base_weight(base: nn.Module, delta: torch.Tensor) -> None:
    """W0 += ΔW in the base's own storage (a packed base re-quantizes through merge_delta)."""
    if _is_packed(base):
        if not callable(getattr(base, "merge_delta", None)):
            raise ValueError(
                f"cannot merge into a {type(base).__name__}: its weight is packed and it has no "
                "merge_delta(delta) method"
            )
        base.merge_delta(delta)
        return
    with torch.no_grad():
        weight = base.weight
        weight += (delta.T if _is_transposed(base) else delta).to(weight.dtype)


# ----------------------------------------------------------------------------------------------
# Choosing layers by name
# ----------------------------------------------------------------------------------------------
def _lora_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def _inside_lora(name: str, lora_names: list[str]) -> bool:
    """True for the wrapped ``.base`` (and anything below) of a LoRALinear."""
    return any(name.startswith(prefix + ".") for prefix in lora_names if prefix)


def find_targets(model: nn.Module, target_modules) -> list[str]:
    """The qualified names of the layers ``add_lora`` would wrap; ValueError if a target is bad.

    Every target must match at least one module (a typo must not silently adapt nothing), and
    every match must be a linear layer without LoRA yet. Names follow ``minilora.targets``.
    """
    lora = _lora_names(model)
    modules = {n: m for n, m in model.named_modules() if n and not _inside_lora(n, lora)}
    linear = [n for n, m in modules.items() if is_linear_like(m) or n in lora]
    chosen = select(modules, target_modules, shown=linear, what="module (linear layers here)")
    for name in chosen:
        module = modules[name]
        if isinstance(module, LoRALinear):
            raise ValueError(f"{name!r} already has LoRA; call add_lora once per layer")
        if not is_linear_like(module):
            hint = ""
            if isinstance(module, nn.MultiheadAttention):
                hint = (
                    " (nn.MultiheadAttention keeps q, k, v in one raw Parameter, "
                    f"in_proj_weight; you can adapt its output projection {name + '.out_proj'!r})"
                )
            hits = [show(t) for t in as_targets(target_modules) if name_matches(name, t)]
            raise ValueError(
                f"target {', '.join(hits)} matches {name!r}, a {type(module).__name__}, not a "
                f"linear layer{hint}"
            )
    return chosen


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

    ``target_modules``: a name, a compiled regex, or a list of them (see ``minilora.targets``).
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
        if is_linear_like(module) and _is_packed(module):
            total += module.in_features * module.out_features
    return trainable, total


def trainable_report(model: nn.Module) -> str:
    """'trainable params: 1,234 || all params: 5,678 || trainable%: 21.7330' (PEFT's format)."""
    trainable, total = count_parameters(model)
    percent = 100.0 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {percent:.4f}"
