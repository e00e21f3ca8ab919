"""Homework checkers: call one on your answer, and it says precisely what is wrong with it.

Each chapter ends with exercises. Where the answer is a function or a number, a checker here
tests it on fresh random inputs against the correct result and, when they disagree, looks for
the usual mistakes (a transposed shape, the scaling α/r missing, B not starting at zero, a
forgotten layer, ...) and names the one it finds::

    from minilora.course.checkers import check_lora_forward

    def my_forward(W0, A, B, x, scaling):
        return x @ W0.T + scaling * (x @ A.T) @ B.T

    check_lora_forward(my_forward)   # prints "✓ ..." and returns True, or raises ExerciseError

``ExerciseError`` is an ``AssertionError``: a failing check stops the notebook cell (or a pytest
test) with its message. Functions you write may take and return NumPy arrays (the checker hands
you float64 NumPy arrays) or PyTorch tensors (they are converted).

Notation (the course's): W0 is d × k (PyTorch's (out, in)), A is r × k, B is d × r, a batch x is
n × k (one example per row), y = x·W0ᵀ + s·x·Aᵀ·Bᵀ with s = α/r, and dy = ∂L/∂y is n × d.
The checkers use n, k, d, r all different (3, 5, 7, 2), so a transposed matrix always shows up
as a wrong shape instead of passing by accident.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "ExerciseError",
    "check_lora_forward",
    "check_lora_backward",
    "check_merge",
    "check_lora_init",
    "check_scaling",
    "check_param_count",
    "check_nf4_codebook",
    "check_nf4_quantize",
    "check_bits_per_weight",
    "check_adam_state_bytes",
    "check_d90",
]

N, K, D, R = 3, 5, 7, 2  # batch rows, in features, out features, rank: all different
SHAPES = (
    f"W0 (d, k) = ({D}, {K}), A (r, k) = ({R}, {K}), B (d, r) = ({D}, {R}), x (n, k) = ({N}, {K})"
)
RTOL, ATOL = 1e-5, 1e-8  # float64 inputs; float32 answers still pass


class ExerciseError(AssertionError):
    """Your answer is not right yet; the message says what is wrong and, if it can, why."""


# ----------------------------------------------------------------------------------------------
# Helpers: call the student's function, convert its answer, compare and diagnose
# ----------------------------------------------------------------------------------------------
def _ok(message: str) -> bool:
    print(f"✓ {message}")
    return True


def _to_array(value, name: str) -> np.ndarray:
    """A NumPy float64 array from an array, a tensor (detached) or a nested list."""
    if value is None:
        raise ExerciseError(f"{name} is None: did you forget a `return`?")
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ExerciseError(f"{name} is not an array of numbers ({type(value).__name__})") from err
    return array


def _call(fn: Callable, args: tuple, inputs: dict[str, np.ndarray]):
    """Run the student's function on copies, report an exception or an in-place change clearly."""
    copies = tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args)
    try:
        result = fn(*copies)
    except Exception as err:  # any error of the student's code is reported, not re-raised raw
        raise ExerciseError(
            f"your function raised {type(err).__name__}: {err}. It was called with {SHAPES}; "
            "check the order of your matrix products and where a transpose (.T) is needed"
        ) from err
    for (name, original), passed in zip(inputs.items(), copies, strict=False):
        if isinstance(passed, np.ndarray) and not np.array_equal(passed, original):
            raise ExerciseError(f"your function changed its input {name} in place; leave it as is")
    return result


def _compare(
    name: str,
    got,
    want: np.ndarray,
    shape_of: str,
    factors: Sequence[tuple[float, str]] = (),
    mistakes: Sequence[tuple[str, np.ndarray]] = (),
) -> None:
    """Raise ExerciseError naming the mistake if ``got`` is not ``want`` (up to float rounding).

    In order: a wrong shape (a transposed one gets its own hint), NaN/inf, a known wrong formula
    from ``mistakes`` (label, what that formula gives), a constant factor away from ``want``
    (named by ``factors`` if it is one of them), and otherwise the largest difference.
    """
    got = _to_array(got, name)
    if got.shape != want.shape:
        if got.shape == want.shape[::-1]:
            raise ExerciseError(
                f"{name} has shape {got.shape} but {shape_of} is {want.shape}: did you transpose?"
            )
        raise ExerciseError(
            f"{name} has shape {got.shape}, but it must be {want.shape} ({shape_of})"
        )
    if not np.all(np.isfinite(got)):
        raise ExerciseError(f"{name} contains NaN or inf")
    if np.allclose(got, want, rtol=RTOL, atol=ATOL):
        return
    for label, wrong in mistakes:
        if wrong.shape == got.shape and np.allclose(got, wrong, rtol=RTOL, atol=ATOL):
            raise ExerciseError(f"{name} {label}")
    scale = float((got * want).sum() / max((want * want).sum(), 1e-300))
    if np.allclose(got, scale * want, rtol=RTOL, atol=ATOL):
        for factor, label in factors:
            if math.isclose(scale, factor, rel_tol=1e-4):
                raise ExerciseError(f"{name} is off by a factor of {scale:.4g}: {label}")
        raise ExerciseError(f"{name} is off by a constant factor of {scale:.4g}")
    worst = np.unravel_index(np.argmax(np.abs(got - want)), want.shape)
    raise ExerciseError(
        f"{name} is wrong: at index {tuple(int(i) for i in worst)} it is {got[worst]:.6g}, "
        f"expected {want[worst]:.6g} (largest difference {np.abs(got - want).max():.3g})"
    )


def _lora_inputs(seed: int):
    """W0, A, B (non-zero, so every term matters), x, dy and a scaling that is not 1."""
    rng = np.random.default_rng(seed)
    W0 = rng.normal(size=(D, K))
    A = rng.normal(size=(R, K))
    B = rng.normal(size=(D, R))
    x = rng.normal(size=(N, K))
    dy = rng.normal(size=(N, D))
    alpha = 5.0
    return W0, A, B, x, dy, alpha / R  # scaling 2.5: its inverse and square are all different


def _scaling_factors(s: float, term: str) -> list[tuple[float, str]]:
    return [
        (1 / s, f"the scaling α/r is missing from {term} (you are off by r/α = 1/{s:g})"),
        (s, f"the scaling α/r = {s:g} is applied twice in {term}"),
        (1 / s**2, f"{term} is divided by the scaling α/r instead of multiplied"),
        (-1.0, f"{term} has the wrong sign"),
    ]


# ----------------------------------------------------------------------------------------------
# Chapters 01-02 (and 04): the LoRA layer by hand
# ----------------------------------------------------------------------------------------------
def check_lora_forward(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(W0, A, B, x, scaling) -> y`` = x·W0ᵀ + scaling·x·Aᵀ·Bᵀ, shape (n, d)."""
    W0, A, B, x, _, s = _lora_inputs(seed)
    base, lora = x @ W0.T, x @ A.T @ B.T
    y = _call(fn, (W0, A, B, x, s), {"W0": W0, "A": A, "B": B, "x": x})
    _compare(
        "y",
        y,
        base + s * lora,
        "(n, d), one row of d outputs per input row,",
        mistakes=[
            (
                "= x·W0ᵀ + x·Aᵀ·Bᵀ: the LoRA term is off by r/α, the scaling α/r is missing",
                base + lora,
            ),
            ("is the base output x·W0ᵀ alone: the LoRA term s·x·Aᵀ·Bᵀ is missing", base),
            ("is the LoRA term alone: add the frozen path x·W0ᵀ", s * lora),
            ("= x·W0ᵀ + (r/α)·x·Aᵀ·Bᵀ: divide α by r, not r by α", base + lora / s),
            ("= x·W0ᵀ + (α/r)²·x·Aᵀ·Bᵀ: the scaling is applied twice", base + s * s * lora),
        ],
    )
    return _ok("lora forward: y = x·W0ᵀ + (α/r)·x·Aᵀ·Bᵀ, shape (n, d)")


def check_lora_backward(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(W0, A, B, x, dy, scaling) -> (dx, dA, dB)`` against the chain rule.

    dB = s·dyᵀ·(x·Aᵀ) (d, r);  dA = s·(dy·B)ᵀ·x (r, k);  dx = dy·W0 + s·dy·B·A (n, k).
    """
    W0, A, B, x, dy, s = _lora_inputs(seed)
    inputs = {"W0": W0, "A": A, "B": B, "x": x, "dy": dy}
    result = _call(fn, (W0, A, B, x, dy, s), inputs)
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise ExerciseError("return three gradients, in this order: (dx, dA, dB)")
    dx, dA, dB = result
    want = {"dx": dy @ W0 + s * dy @ B @ A, "dA": s * (dy @ B).T @ x, "dB": s * dy.T @ (x @ A.T)}
    got_shapes = [_to_array(g, n).shape for g, n in zip(result, want, strict=True)]
    want_shapes = [w.shape for w in want.values()]
    if got_shapes != want_shapes and sorted(got_shapes) == sorted(want_shapes):
        raise ExerciseError(
            f"your gradients have shapes {got_shapes}, which are (dx, dA, dB)'s shapes "
            f"{want_shapes} in another order: return (dx, dA, dB)"
        )
    _compare("dA", dA, want["dA"], "A", _scaling_factors(s, "dA"))
    _compare("dB", dB, want["dB"], "B", _scaling_factors(s, "dB"))
    _compare(
        "dx",
        dx,
        want["dx"],
        "x",
        [(-1.0, "dx has the wrong sign")],
        mistakes=[
            ("= dy·W0 only: the LoRA path s·dy·B·A is missing (x feeds A as well as W0)", dy @ W0),
            (
                "= s·dy·B·A only: the frozen path dy·W0 is missing (frozen W0 still passes "
                "gradient on to x)",
                s * dy @ B @ A,
            ),  # fmt: skip
            (
                "= dy·W0 + dy·B·A: the scaling α/r is missing from the LoRA path",
                dy @ W0 + dy @ B @ A,
            ),
        ],
    )
    return _ok("lora backward: dx, dA and dB match the chain rule (dA has A's shape, dB has B's)")


def check_merge(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(W0, A, B, scaling) -> W`` = W0 + scaling·B·A, shape (d, k) like W0."""
    W0, A, B, _, _, s = _lora_inputs(seed)
    W = _call(fn, (W0, A, B, s), {"W0": W0, "A": A, "B": B})
    _compare(
        "the merged W",
        W,
        W0 + s * B @ A,
        "W0",
        mistakes=[
            ("= W0 + B·A: the scaling α/r is missing from ΔW", W0 + B @ A),
            ("= s·B·A: that is ΔW alone; the merged weight is W0 + ΔW", s * B @ A),
            ("= W0 − s·B·A: ΔW is added, not subtracted (that is unmerging)", W0 - s * B @ A),
            ("= W0 + (r/α)·B·A: divide α by r, not r by α", W0 + B @ A / s),
        ],
    )
    return _ok("merge: W = W0 + (α/r)·B·A, shape (d, k), the same function as base + adapter")


def check_lora_init(fn: Callable, seed: int = 0) -> bool:
    """Check ``fn(d, k, r, rng) -> (A, B)``: A random (r, k), B zero (d, r), so ΔW starts at 0.

    ``rng`` is a ``numpy.random.Generator``; draw A from it (Gaussian or uniform, your choice).
    """
    rng = np.random.default_rng(seed)
    result = _call(fn, (D, K, R, rng), {})
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise ExerciseError("return two matrices, in this order: (A, B)")
    A, B = (_to_array(m, n) for m, n in zip(result, "AB", strict=True))
    for name, m, shape in (("A", A, (R, K)), ("B", B, (D, R))):
        if m.shape != shape:
            hint = ": did you transpose?" if m.shape == shape[::-1] else ""
            raise ExerciseError(
                f"{name} has shape {m.shape}, but it must be {shape} "
                f"({'r × k' if name == 'A' else 'd × r'} for d={D}, k={K}, r={R}){hint}"
            )
    if np.any(B != 0):
        raise ExerciseError(
            "B must start at zero: then ΔW = B·A = 0 and the adapted model starts exactly as the "
            "pretrained one (chapter 02)"
        )
    if np.all(A == 0):
        raise ExerciseError(
            "A is all zeros: with B = 0 as well, the gradients of A and B are both zero and "
            "nothing ever trains (chapter 02). Draw A at random"
        )
    if np.allclose(A, A.flat[0]):
        raise ExerciseError(
            "every entry of A is the same number: its rows then get identical gradients and stay "
            "identical, so the rank never grows past 1. Draw A at random"
        )
    A2 = _to_array(_call(fn, (D, K, R, np.random.default_rng(seed + 1)), {})[0], "A")
    if np.array_equal(A, A2):
        raise ExerciseError("A is the same for two different generators: draw it from `rng`")
    return _ok("lora init: A random (r, k), B zero (d, r), so ΔW = B·A = 0 at the start")


def check_scaling(fn: Callable) -> bool:
    """Check ``fn(alpha, r, use_rslora) -> scaling``: α/r, or α/√r with rsLoRA."""
    cases = [(16.0, 8, False), (16.0, 8, True), (8.0, 4, False), (4.0, 64, True), (1.0, 1, False)]
    for alpha, r, rs in cases:
        try:
            got = float(fn(alpha, r, rs))
        except TypeError as err:
            raise ExerciseError(
                f"call fn(alpha, r, use_rslora) failed with TypeError: {err}. "
                "Your function must take three arguments and return a number"
            ) from err
        want = alpha / math.sqrt(r) if rs else alpha / r
        if math.isclose(got, want, rel_tol=1e-9):
            continue
        call = f"fn({alpha:g}, {r}, use_rslora={rs})"
        wrong = {
            r / alpha: "r/α: it is α/r (α on top)",
            alpha * r: "α·r: divide by the rank, do not multiply",
            alpha: "α: the rank is missing",
            1 / r: "1/r: α is missing",
            alpha
            / math.sqrt(r): "α/√r, rsLoRA's scaling, but use_rslora=False means the paper's α/r",
            alpha / r: "α/r, but use_rslora=True divides by √r instead of r",
        }
        for value, label in wrong.items():
            if math.isclose(got, value, rel_tol=1e-9) and not math.isclose(value, want):
                raise ExerciseError(f"{call} returned {got:g}, which is {label} (want {want:g})")
        raise ExerciseError(f"{call} returned {got:g}, expected {want:g}")
    return _ok("scaling: α/r, and α/√r when use_rslora=True")


# ----------------------------------------------------------------------------------------------
# Chapters 03-04: counting what LoRA trains
# ----------------------------------------------------------------------------------------------
def check_param_count(model, r: int, answer, targets=None) -> bool:
    """Check ``answer`` = the number of parameters LoRA of rank ``r`` trains in ``model``.

    ``targets``: the layer names LoRA adapts (as in ``add_lora``); ``None`` means every linear
    layer. The right count is Σ r·(d_in + d_out) over those layers: A is r × d_in, B is d_out × r.
    """
    from minilora.lora import LoRALinear, find_targets, is_linear_like

    if isinstance(answer, bool) or not isinstance(answer, (int, np.integer)):
        raise ExerciseError(f"the answer must be a whole number of parameters, got {answer!r}")
    if targets is None:  # every linear layer (a LoRALinear counts once, not its inner .base)
        names = [
            n for n, m in model.named_modules() if is_linear_like(m) or isinstance(m, LoRALinear)
        ]
        names = [n for n in names if not any(n.startswith(o + ".") for o in names if o)]
    else:
        names = find_targets(model, targets)
    layers = {n: model.get_submodule(n) for n in names}
    dims = {n: (m.in_features, m.out_features) for n, m in layers.items()}
    per_layer = {n: r * (i + o) for n, (i, o) in dims.items()}
    want = sum(per_layer.values())
    answer = int(answer)
    if answer == want:
        layers_text = f"{len(dims)} layer" + ("s" if len(dims) > 1 else "")
        return _ok(f"{answer:,} trainable parameters: r·(d_in + d_out) summed over {layers_text}")
    weights = sum(i * o for i, o in dims.values())
    biases = sum(o for n, (_, o) in dims.items() if getattr(layers[n], "bias", None) is not None)
    total = sum(p.numel() for p in model.parameters())
    named = {
        weights: "the number of weights in those layers (what full fine-tuning trains), not "
        "LoRA's r·(d_in + d_out) per layer",
        weights + biases: "the weights and biases of those layers (full fine-tuning), not LoRA's",
        total: "every parameter of the model (full fine-tuning), not LoRA's",
        sum(2 * r * o for _, o in dims.values()): "2·r·d_out per layer, which assumes square "
        "layers; these are not: count r·(d_in + d_out)",
        sum(2 * r * i for i, _ in dims.values()): "2·r·d_in per layer, which assumes square "
        "layers; these are not: count r·(d_in + d_out)",
        want + biases: "LoRA's count plus the biases: LoRA keeps the biases frozen",
        want // 2 if want % 2 == 0 else -1: "half the right count: count both A (r × d_in) and "
        "B (d_out × r)",
        sum(r * i * o for i, o in dims.values()): "r·d_in·d_out per layer: A and B are added "
        "(r·d_in + d_out·r), not multiplied",
    }
    if answer in named and answer != want:
        raise ExerciseError(f"{answer:,} is {named[answer]} (expected {want:,})")
    for name, count in per_layer.items():
        if answer == want - count and len(per_layer) > 1:
            raise ExerciseError(
                f"{answer:,} leaves out layer {name!r} ({count:,} parameters); expected {want:,}"
            )
    raise ExerciseError(
        f"{answer:,} is not right; per layer it is r·(d_in + d_out): "
        + ", ".join(f"{n}: {r}·({i} + {o})" for n, (i, o) in dims.items())
    )


# ----------------------------------------------------------------------------------------------
# Chapters 05-06: NF4
# ----------------------------------------------------------------------------------------------
def check_nf4_codebook(values) -> bool:
    """Check 16 values against QLoRA's NF4 table (bitsandbytes' values, to 1e-5)."""
    from minilora.nf4 import NF4_CODEBOOK

    v = _to_array(values, "the codebook").reshape(-1)
    want = NF4_CODEBOOK.double().numpy()
    if v.size != 16:
        raise ExerciseError(f"a 4-bit code has 2**4 = 16 values, you have {v.size}")
    if not np.all(np.isfinite(v)):
        raise ExerciseError(
            "the codebook contains NaN or inf (the quantile at probability 1 is inf)"
        )
    if not np.all(np.diff(v) > 0):
        raise ExerciseError("list the 16 values in increasing order, each once (np.sort(values))")
    if not (math.isclose(v[0], -1.0) and math.isclose(v[-1], 1.0)):
        raise ExerciseError(
            f"the values span [{v[0]:.4g}, {v[-1]:.4g}]: normalize them to [-1, 1] (divide the "
            "positive and the negative half each by its largest |value|)"
        )
    if not np.any(v == 0.0):
        raise ExerciseError(
            "0 is not in the codebook: NF4 makes 0 exactly representable (7 negative values, 0, "
            "8 positive), so zero weights (e.g. padding) stay exactly zero"
        )
    n_neg, n_pos = int((v < 0).sum()), int((v > 0).sum())
    if (n_neg, n_pos) != (7, 8):
        raise ExerciseError(f"{n_neg} negative and {n_pos} positive values: NF4 has 7 and 8")
    halves = (np.diff(v[v <= 0]), np.diff(v[v >= 0]))
    if all(np.allclose(h, h[0]) for h in halves):
        raise ExerciseError(
            "the values are evenly spaced (an integer grid); NF4 uses quantiles of N(0, 1), "
            "dense near 0 where most weights are"
        )
    if not np.allclose(v, want, atol=1e-5):
        i = int(np.argmax(np.abs(v - want)))
        raise ExerciseError(
            f"value {i} is {v[i]:.6f}, NF4 has {want[i]:.6f}: check the probabilities you take "
            "quantiles at (QLoRA/bitsandbytes use 8 from 0.9677083 down to 0.5 for the positive "
            "half, 7 for the negative half, dropping the median 0.5 itself)"
        )
    return _ok(
        "NF4 codebook: 16 normal quantiles in [-1, 1] with an exact 0 (7 negative, 8 positive)"
    )


def check_nf4_quantize(fn: Callable, seed: int = 0, blocksize: int = 64) -> bool:
    """Check ``fn(w, blocksize) -> (codes, absmax)`` for a 1-D float32 tensor ``w``.

    ``codes[i]`` is the index (0..15) of the NF4 value nearest to ``w[i] / absmax[block of i]``;
    ``absmax`` has one entry per block: the largest |w| in that block.
    """
    import torch

    from minilora.nf4 import NF4_CODEBOOK, quantize_blockwise

    gen = torch.Generator().manual_seed(seed)
    n_blocks = 4
    # blocks with very different scales, so a single global absmax is visibly wrong
    w = torch.randn(n_blocks, blocksize, generator=gen) * torch.tensor(
        [[0.01], [0.1], [1.0], [3.0]]
    )
    w = w.reshape(-1)
    w[5] = -w.abs().max() * 1.5  # the largest |w| of the tensor is negative
    want_codes, want_absmax = quantize_blockwise(w, NF4_CODEBOOK, blocksize)
    try:
        result = fn(w.clone(), blocksize)
    except Exception as err:  # reported with the inputs' shapes
        raise ExerciseError(
            f"your function raised {type(err).__name__}: {err} (w is a float32 tensor of "
            f"{w.numel()} values, blocksize {blocksize})"
        ) from err
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise ExerciseError("return two things, in this order: (codes, absmax)")
    codes, absmax = (
        _to_array(t, n).reshape(-1) for t, n in zip(result, ("codes", "absmax"), strict=True)
    )
    want_absmax = want_absmax.double().numpy()
    if absmax.size == 1:
        raise ExerciseError(
            "one absmax for the whole tensor: QLoRA keeps one per block of "
            f"{blocksize} values ({n_blocks} here), so a large block does not crush a small one"
        )
    if absmax.size != n_blocks:
        raise ExerciseError(
            f"absmax has {absmax.size} values; {w.numel()} / {blocksize} = {n_blocks} blocks"
        )
    signed_max = w.view(n_blocks, blocksize).amax(dim=1).double().numpy()
    if not np.allclose(absmax, want_absmax, rtol=1e-6):
        if np.allclose(absmax, signed_max, rtol=1e-6):
            raise ExerciseError(
                "absmax is the largest w, but it must be the largest |w| (abs first)"
            )
        raise ExerciseError(f"absmax should be {want_absmax.round(4)}, got {absmax.round(4)}")
    want_codes = want_codes.long().numpy()
    if codes.size != w.numel():
        raise ExerciseError(
            f"codes has {codes.size} entries; w has {w.numel()}: one code per value"
        )
    wrong = np.flatnonzero(codes != want_codes)
    if wrong.size:
        i = int(wrong[0])
        scaled = float(w[i] / want_absmax[i // blocksize])
        if codes.min() >= 0 and codes.max() <= 15 and np.all(np.abs(codes - want_codes) <= 1):
            hint = " (off by one: round to the *nearest* value, e.g. via the midpoints)"
        else:
            hint = ""
        raise ExerciseError(
            f"{wrong.size} of {w.numel()} codes are wrong; the first at index {i}: w/absmax = "
            f"{scaled:.4f}, nearest NF4 value is {NF4_CODEBOOK[want_codes[i]]:.4f} (code "
            f"{want_codes[i]}), you gave code {codes[i]:g}{hint}"
        )
    return _ok(f"NF4 quantization: nearest-value codes and one absmax per block of {blocksize}")


def check_bits_per_weight(answer: float, double_quant: bool = True, blocksize: int = 64) -> bool:
    """Check the storage cost of NF4 in bits per weight (the scales included).

    4 bits per code, plus one fp32 absmax per block (32/blocksize); with double quantization the
    absmax is 8 bits and each block of 256 absmax values keeps one fp32 scale.
    """
    plain = 4 + 32 / blocksize
    dq = 4 + 8 / blocksize + 32 / (blocksize * 256)
    want = dq if double_quant else plain
    got = float(answer)
    if math.isclose(got, want, abs_tol=1e-3):
        how = "with" if double_quant else "without"
        return _ok(f"{want:.4g} bits per weight ({how} double quantization)")
    if math.isclose(got, 4.0):
        raise ExerciseError("4 bits counts the codes only: the absmax scales cost bits too")
    if double_quant and math.isclose(got, plain, abs_tol=1e-3):
        raise ExerciseError(f"{plain:g} is the cost without double quantization (fp32 absmax)")
    if not double_quant and math.isclose(got, dq, abs_tol=1e-3):
        raise ExerciseError(
            f"{dq:.4g} is the cost with double quantization; here the absmax is fp32"
        )
    if double_quant and math.isclose(got, 4 + 8 / blocksize, abs_tol=1e-3):
        raise ExerciseError("add the fp32 scale each block of 256 absmax values keeps: 32/(64·256)")
    raise ExerciseError(f"{got:g} bits per weight is not right (expected about {want:.4g})")


def check_adam_state_bytes(n_params: int, answer) -> bool:
    """Check the bytes Adam's optimizer state takes for ``n_params`` parameters: 2 fp32 moments."""
    want = 8 * n_params
    got = int(answer)
    if got == want:
        return _ok(f"{want:,} bytes: two fp32 moments (m and v) of 4 bytes per parameter")
    named = {
        4 * n_params: "one moment only: Adam keeps two (m and v)",
        2 * n_params: "two bytes per parameter: the moments are fp32 (4 bytes each), two of them",
        12 * n_params: "12 bytes includes the fp32 master weights: the question is the moments",
        16 * n_params: "16 bytes is the whole mixed-precision training state, not the moments",
    }
    if got in named:
        raise ExerciseError(f"{got:,} bytes is {named[got]} (expected {want:,})")
    raise ExerciseError(f"{got:,} bytes is not right (expected {want:,})")


# ----------------------------------------------------------------------------------------------
# Chapter 09: intrinsic dimension
# ----------------------------------------------------------------------------------------------
def check_d90(dims, gains, full_gain: float, answer) -> bool:
    """Check ``answer`` = d90: the smallest d whose gain reaches 90 % of full fine-tuning's gain."""
    from minilora.intrinsic import find_d90

    want = find_d90(dims, gains, full_gain)
    if answer == want:
        return _ok(f"d90 = {want}: the smallest d with gain ≥ 0.9 × {full_gain:.3g}")
    reached = [d for d, g in zip(dims, gains, strict=True) if g >= 0.9 * full_gain]
    if want is None:
        raise ExerciseError("no d reaches 90 % of full fine-tuning's gain here: the answer is None")
    full = [d for d, g in zip(dims, gains, strict=True) if g >= full_gain]
    if full and answer == min(full):
        raise ExerciseError("that d matches full fine-tuning (100 %); d90 asks for 90 % of it")
    if answer in reached:
        raise ExerciseError(
            f"d = {answer} reaches 90 %, but a smaller d does too: d90 is the smallest"
        )
    gain = dict(zip(dims, gains, strict=True)).get(answer)
    if gain is None:
        raise ExerciseError(f"{answer} is not one of the dimensions measured: {list(dims)}")
    raise ExerciseError(
        f"d90 is not {answer}: its gain {gain:.3g} is below 0.9 × {full_gain:.3g} = "
        f"{0.9 * full_gain:.3g}"
    )
