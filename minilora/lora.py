"""LoRA for any PyTorch model: wrap linear layers, train only A and B, merge, unload, count.

The companion of chapter 04. One class and a handful of verbs:

- ``LoRALinear(base, r, alpha)`` wraps a frozen linear layer ``base`` (kept as ``self.base``) and
  adds two small trainable matrices: ``lora_A`` (r × in_features) and ``lora_B``
  (out_features × r, zeros). Its output is ``base(x) + scaling · dropout(x) · Aᵀ · Bᵀ`` with
  ``scaling = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA). Because B starts at zero, a freshly
  wrapped model computes exactly what the pretrained one did.
- ``add_lora(model, targets, ...)`` swaps the chosen layers for ``LoRALinear`` and freezes
  everything else (``"all-linear"`` picks every linear layer but the output head);
  ``merge_lora`` folds ``ΔW = scaling · B·A`` into the base weights, ``unmerge_lora`` takes it out
  again, ``unload_lora`` removes the adapters without merging, ``disable_lora`` is a context
  manager that runs the base model.
- ``count_parameters`` / ``trainable_report`` answer "what am I training?". State dicts (only
  the adapters, or the base with its original keys) and adapter files live in
  ``minilora.adapters``.

Which layers can be a base. A layer is recognised by what it offers, not by its class:

- ``in_features``, ``out_features`` and a 2-D float ``weight`` of shape (out, in): ``nn.Linear``
  and its subclasses;
- ``nx``, ``nf`` and a 2-D float ``weight`` of shape (in, out) = (nx, nf): the transposed linear
  layer of GPT-2 (transformers' ``Conv1D``);
- ``in_features``, ``out_features`` and ``dequantize()`` returning the (out, in) float weight: a
  packed, frozen base such as ``minilora.nf4.Linear4bit``. It never changes in place: merging
  asks it for a new base, ``base.merged_with(delta)``.

Parents that read ``.weight`` directly. ``nn.MultiheadAttention`` hands ``out_proj.weight`` and
``out_proj.bias`` straight to ``F.multi_head_attention_forward``, and
``nn.TransformerEncoderLayer``'s fast path (eval mode, no grad) does the same with
``linear1``/``linear2``: a wrapper whose ``forward`` is never called would be a LoRA that silently
does nothing. So ``LoRALinear.weight`` is the *adapted* weight ``W0 + scaling · B·A`` (``.bias``
the base bias). Only this property forms B·A; the forward pass never does (two thin matmuls
instead of a d × k one). Dropout cannot act on that path, so it is refused there.

What is never silent: a merge into a weight shared with another module (a tied head) is refused
unless ``untie=True``; a ΔW with NaN or inf is never merged; the merged flag is saved in the
state dict, so reloading a merged layer does not add ΔW twice; on half-precision bases A and B
are float32 (outputs are cast back); r > min(d, k) warns. Every refusal leaves the model as it was.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import sys
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from minilora.targets import as_targets, name_matches, select, show

INITS = ("gaussian", "kaiming", "peft_gaussian")


# ----------------------------------------------------------------------------------------------
# Checking hyper-parameters, recognising a base
# ----------------------------------------------------------------------------------------------
def check_hyperparameters(r, alpha, dropout=0.0, init="gaussian", use_rslora=False):
    """Return (r, alpha) as int and float; ValueError naming the problem if anything is invalid.

    NumPy scalars from a sweep (``np.int64(8)``, ``np.float32(16)``) are numbers too.
    """
    if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 1:
        raise ValueError(f"r must be an integer >= 1 (the rank of ΔW = B·A), got {r!r}")
    if not (_real(alpha) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive number (scaling = alpha / r), got {alpha!r}")
    if not (_real(dropout) and 0.0 <= dropout < 1.0):
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not isinstance(use_rslora, bool):
        raise ValueError(f"use_rslora must be True or False, got {use_rslora!r}")
    return int(r), float(alpha)


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


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


def is_packed(base: nn.Module) -> bool:
    """A base that stores its weight packed (4-bit) and offers ``dequantize()``."""
    return callable(getattr(base, "dequantize", None))


def is_transposed(base: nn.Module) -> bool:
    """A base storing its weight as (in, out), like transformers' Conv1D."""
    return not is_packed(base) and getattr(base, "in_features", None) is None


def dense_weight(base: nn.Module) -> torch.Tensor:
    """The (out, in) weight of a base: a view of its Parameter, or the dequantized copy."""
    if is_packed(base):
        return base.dequantize()
    return base.weight.T if is_transposed(base) else base.weight


def _caller_outside_minilora() -> int:
    """The stacklevel of the first frame outside this package: warnings point at user code."""
    level, frame = 2, sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("minilora."):
        level, frame = level + 1, frame.f_back
    return level


def _finite(t: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} contains NaN or inf; refusing to use it (the model is unchanged)")
    return t


# ----------------------------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------------------------
class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: y = base(x) + s · x·Aᵀ·Bᵀ.

    ``init="gaussian"`` (the default) draws A ~ N(0, 1/k), k = in_features: the paper's "random
    Gaussian", scaled like the layer's input whatever r is (chapter 02: the first Adam step then
    changes the loss equally at every rank; the NumPy layer uses the same law). ``"kaiming"`` is
    PEFT's default, Kaiming-uniform with a = √5, A ~ U(-1/√k, 1/√k). ``"peft_gaussian"`` is PEFT's
    ``init_lora_weights="gaussian"``, A ~ N(0, 1/r²). B is zero in every case, so ΔW = 0 at first.
    A and B live on the base's device, in float32 on a half-precision base (float64 stays float64),
    and are drawn from PyTorch's global generator (seed it for reproducible adapters).
    """

    def __init__(self, base, r, alpha, dropout=0.0, init="gaussian", use_rslora=False):
        r, alpha = check_hyperparameters(r, alpha, dropout, init, use_rslora)
        if isinstance(base, LoRALinear):
            raise ValueError("this layer already has LoRA; wrapping it twice would stack adapters")
        if not is_linear_like(base):
            raise ValueError(
                "LoRALinear wraps linear layers (in_features/out_features and a 2-D float weight, "
                f"or a dequantize() method), got {type(base).__name__}"
            )
        super().__init__()
        self.base = base.requires_grad_(False)  # the pretrained weights stay frozen
        (k, d), dtype, device = base_features(base), *_adapter_dtype_and_device(base)
        self.in_features, self.out_features = k, d
        self.r, self.alpha, self.init, self.use_rslora = r, alpha, init, use_rslora
        self.dropout_p, self.scaling = float(dropout), compute_scaling(r, alpha, use_rslora)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(r, k, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(d, r, dtype=dtype, device=device))
        self.reset_lora_parameters()
        self.merged = self.disabled = False  # ΔW inside the base weight / behave like the base
        self.shared_with: tuple[str, ...] = ()  # other users of base.weight (set by add_lora)
        self.train(base.training)  # a wrapper added to a model in eval mode stays in eval mode
        if r > min(d, k):
            warnings.warn(
                f"r={r} > min(d, k)={min(d, k)} for a {d}×{k} layer: ΔW = B·A has rank ≤ "
                f"{min(d, k)}, and the adapter ({r * (d + k):,} numbers) is bigger than the matrix "
                f"({d * k:,}); LoRA saves only for r < d·k/(d+k) = {d * k / (d + k):.1f}",
                stacklevel=_caller_outside_minilora(),
            )

    def reset_lora_parameters(self) -> None:
        """Draw A afresh and zero B, so the layer computes exactly what ``base`` computes."""
        with torch.no_grad():
            if self.init == "kaiming":
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            else:
                k_or_r2 = self.in_features if self.init == "gaussian" else self.r**2
                nn.init.normal_(self.lora_A, mean=0.0, std=1.0 / math.sqrt(k_or_r2))
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

    @property
    def weight(self) -> torch.Tensor:
        """The adapted weight W0 + ΔW, in the base's own layout ((in, out) for a Conv1D base)."""
        w = dense_weight(self.base)
        if not (self.merged or self.disabled):
            w = w + self.delta_weight().to(w.dtype)
        return w.T if is_transposed(self.base) else w

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base, "bias", None)

    def merge(self) -> None:
        """Add ΔW into the base weight in place; the forward then costs what the base costs."""
        if self.merged:
            raise ValueError("this LoRA layer is already merged; merging twice would add ΔW twice")
        _check_mergeable(self)
        with torch.no_grad():
            dense_weight(self.base).add_(_finite(self.delta_weight(), "ΔW = s·B·A"))
        self.merged = True

    def unmerge(self) -> None:
        """Subtract ΔW from the base weight again (exact up to float rounding)."""
        if not self.merged:
            raise ValueError("this LoRA layer is not merged; there is nothing to unmerge")
        with torch.no_grad():
            dense_weight(self.base).sub_(self.delta_weight())
        self.merged = False

    # The merged flag travels in the state dict: a merged layer reloaded is still merged.
    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(self.merged)

    def set_extra_state(self, state) -> None:
        self.merged = bool(state)

    def extra_repr(self) -> str:
        rule = "alpha/sqrt(r)" if self.use_rslora else "alpha/r"
        return (
            f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g} ({rule}), "
            f"dropout={self.dropout_p}, merged={self.merged}"
        )


def _adapter_dtype_and_device(base: nn.Module) -> tuple[torch.dtype, torch.device]:
    """Float32 adapters on float16/bfloat16 bases (one AdamW step in fp16 can NaN them)."""
    tensors = [*base.parameters(), *base.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype = getattr(base, "compute_dtype", torch.float32) if is_packed(base) else base.weight.dtype
    return torch.promote_types(dtype, torch.float32), device


def _check_mergeable(layer: LoRALinear) -> None:
    if is_packed(layer.base):
        raise ValueError("a packed (4-bit) base never changes in place; use merge_lora(model)")
    if layer.shared_with:
        raise ValueError(
            f"the base weight is shared with {', '.join(layer.shared_with)} (tied weights), "
            "which merging would change too; merge_lora(model, untie=True) gives it its own copy"
        )


# ----------------------------------------------------------------------------------------------
# Choosing layers by name
# ----------------------------------------------------------------------------------------------
def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRALinear in ``model`` by qualified name (the names adapters are saved under)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def _outside_lora(model: nn.Module) -> dict[str, nn.Module]:
    """Modules by name, except the wrapped ``.base`` (and anything below) of a LoRALinear."""
    inner = [n + "." for n in lora_layers(model) if n]
    return {n: m for n, m in model.named_modules() if n and not n.startswith(tuple(inner))}


def _output_head(model: nn.Module, linear: list[str]) -> str | None:
    """The layer "all-linear" skips: transformers' output embeddings, else the last linear one."""
    if not callable(getattr(model, "get_output_embeddings", None)):
        return linear[-1] if linear else None
    head = model.get_output_embeddings()
    return next((n for n, m in model.named_modules() if m is head and head is not None), None)


def find_targets(model: nn.Module, target_modules, exclude_modules=None) -> list[str]:
    """The qualified names of the layers ``add_lora`` would wrap; ValueError if a target is bad.

    Every target must match at least one module (a typo must not silently adapt nothing), and
    every match must be a linear layer without LoRA yet. Names follow ``minilora.targets``;
    ``"all-linear"`` is every linear layer except the output head.
    """
    modules = _outside_lora(model)
    linear = [n for n, m in modules.items() if is_linear_like(m)]
    if target_modules == "all-linear":
        chosen = [n for n in linear if n != _output_head(model, linear)]
    else:
        chosen = select(modules, target_modules, shown=linear, what="module (linear layers here)")
    if exclude_modules is not None:
        excluded = set(select(modules, exclude_modules, what="module (exclude_modules)"))
        chosen = [n for n in chosen if n not in excluded]
    if not chosen:
        raise ValueError("no layer is left to adapt after exclude_modules")
    for name in chosen:
        module = modules[name]
        if isinstance(module, LoRALinear):
            raise ValueError(f"{name!r} already has LoRA; call add_lora once per layer")
        if not is_linear_like(module):
            mha = isinstance(module, nn.MultiheadAttention)
            hint = f" (q, k, v are one in_proj_weight; adapt {name}.out_proj)" if mha else ""
            hits = [show(t) for t in as_targets(target_modules) if name_matches(name, t)]
            raise ValueError(
                f"target {', '.join(hits)} matches {name!r}, a {type(module).__name__}, not a "
                f"linear layer{hint}"
            )
    return chosen


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    setattr(*_parent(model, name), module)


def tied_names(model: nn.Module, name: str) -> tuple[str, ...]:
    """Other names under which the weight of layer ``name`` is registered (tied weights)."""
    weight, own = getattr(model.get_submodule(name), "weight", None), name + "."
    params = model.named_parameters(remove_duplicate=False)
    return tuple(n for n, p in params if p is weight and not n.startswith(own))


# ----------------------------------------------------------------------------------------------
# The model-level verbs
# ----------------------------------------------------------------------------------------------
def add_lora(
    model, target_modules, r=8, alpha=16.0, dropout=0.0, init="gaussian", use_rslora=False,
    exclude_modules=None,
) -> nn.Module:  # fmt: skip
    """Wrap the linear layers named by ``target_modules`` in LoRALinear; freeze the rest.

    ``target_modules``: a name, a compiled regex, a list of them (see ``minilora.targets``), or
    ``"all-linear"``; ``exclude_modules`` names layers to leave alone. Everything is checked
    before the model is touched: on a ValueError it is unchanged. The first call freezes every
    parameter but A and B (unfreeze a new head yourself; a later call leaves it unfrozen). On a
    transformers model the input embeddings are made to require grad, so reentrant gradient
    checkpointing still reaches the adapters (as PEFT does). Changed in place and returned.
    """
    settings = (r, alpha, dropout, init, use_rslora)
    check_hyperparameters(*settings)
    names = find_targets(model, target_modules, exclude_modules)
    return wrap_layers(model, dict.fromkeys(names, settings))


def wrap_layers(model: nn.Module, plan: dict[str, tuple]) -> nn.Module:
    """Wrap each named layer with its own (r, alpha, dropout, init, use_rslora); checks first."""
    if isinstance(model, LoRALinear) or is_linear_like(model):
        raise ValueError("add_lora adapts layers inside a model; use LoRALinear for one layer")
    for name, (_, _, dropout, *_) in plan.items():
        if dropout > 0 and isinstance(_parent(model, name)[0], nn.MultiheadAttention):
            raise ValueError(
                f"{name!r}: nn.MultiheadAttention reads out_proj.weight directly, so LoRA dropout "
                "cannot act on its input; use dropout=0 for this layer"
            )
    first = not lora_layers(model)
    ties = {name: tied_names(model, name) for name in plan}
    for name, settings in plan.items():  # all checks passed: now mutate
        layer = LoRALinear(model.get_submodule(name), *settings)
        layer.shared_with = ties[name]
        replace_module(model, name, layer)
    if first:
        adapters = {id(p) for m in lora_layers(model).values() for p in (m.lora_A, m.lora_B)}
        for p in model.parameters():
            p.requires_grad_(id(p) in adapters)
    if first and callable(getattr(model, "enable_input_require_grads", None)):
        with contextlib.suppress(NotImplementedError):  # a model without input embeddings
            model.enable_input_require_grads()
    return model


def _layers_or_error(model: nn.Module) -> dict[str, LoRALinear]:
    if not (layers := lora_layers(model)):
        raise ValueError("this model has no LoRA layers (add_lora never called, or unloaded)")
    return layers


def merge_lora(model: nn.Module, unload: bool = True, untie: bool = False) -> nn.Module:
    """Fold every adapter into its base weight: same function, no extra cost (in place).

    ``unload=True`` puts the plain base layers back (no LoRALinear left); ``unload=False`` keeps
    the merged wrappers, so ``unmerge_lora``/``disable_lora`` can take ΔW out again. A packed
    (4-bit) base is replaced by a new one storing W + ΔW re-quantized (its rounding is reported;
    needs ``unload=True``). A weight shared with another module is refused unless ``untie=True``,
    which gives the layer its own copy first. Checked before anything changes.
    """
    layers = _layers_or_error(model)
    for name, layer in layers.items():
        _finite(layer.delta_weight(), f"ΔW of layer {name!r}")
        if is_packed(layer.base) and not (unload and hasattr(layer.base, "merged_with")):
            raise ValueError(
                f"{name!r} has a packed (4-bit) base: merging builds a new base with W + ΔW "
                "re-quantized (base.merged_with), which needs unload=True (it cannot be unmerged)"
            )
        if not untie and layer.shared_with:
            _check_mergeable(layer)  # raises, naming the modules that share the weight
    for name, layer in layers.items():  # all checks passed: now mutate
        if layer.shared_with:  # untie=True: this layer gets its own copy of the weight
            layer.base.weight = nn.Parameter(layer.base.weight.detach().clone(), False)
            layer.shared_with = ()
        if is_packed(layer.base):
            new_base = layer.base.merged_with(layer.delta_weight().detach())
        else:
            if not layer.merged:
                layer.merge()
            new_base = layer.base
        if unload and not name:  # the model itself is one LoRALinear
            return new_base
        if unload:
            replace_module(model, name, new_base)
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Take ΔW out of every merged layer again (in place; exact up to float rounding)."""
    merged = [layer for layer in _layers_or_error(model).values() if layer.merged]
    if not merged:
        raise ValueError("no LoRA layer of this model is merged; there is nothing to unmerge")
    for layer in merged:
        layer.unmerge()
    return model


def unload_lora(model: nn.Module) -> nn.Module:
    """Remove every adapter without merging: the base layers come back as they were (in place)."""
    for name, layer in _layers_or_error(model).items():
        if layer.merged:
            layer.unmerge()
        if not name:
            return layer.base
        replace_module(model, name, layer.base)
    return model


@contextlib.contextmanager
def disable_lora(model: nn.Module) -> Iterator[nn.Module]:
    """Inside ``with disable_lora(model):`` the model computes what its base computes.

    A merged layer has ΔW taken out for the duration, and its merged weight is put back bit for
    bit on exit (a copy is kept, so the round trip adds no rounding).
    """
    layers = list(_layers_or_error(model).values())
    saved = [(m, m.disabled, m.merged and dense_weight(m.base).detach().clone()) for m in layers]
    for layer in layers:
        if layer.merged:
            layer.unmerge()
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, disabled, merged_weight in saved:
            if merged_weight is not False:  # put the merged weight back, bit for bit
                with torch.no_grad():
                    dense_weight(layer.base).copy_(merged_weight)
                layer.merged = True
            layer.disabled = disabled


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) number of parameter elements, each shared Parameter counted once.

    A packed base (a 4-bit layer stores codes in buffers) still holds in × out frozen weights:
    they are counted in the total, so a QLoRA model reports the parameters of the model, not the
    bytes of its storage (peft#1020).
    """
    params = list(model.parameters())
    packed = [m for m in model.modules() if is_linear_like(m) and is_packed(m)]
    total = sum(p.numel() for p in params) + sum(m.in_features * m.out_features for m in packed)
    return sum(p.numel() for p in params if p.requires_grad), total


def trainable_report(model: nn.Module) -> str:
    """'trainable params: 1,234 || all params: 5,678 || trainable%: 21.7330' (PEFT's format)."""
    trainable, total = count_parameters(model)
    percent = 100.0 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {percent:.4f}"
