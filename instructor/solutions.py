"""Reference solutions to the exercises, one function per checker in ``minilora.course.checkers``.

Kept apart from the package (and from the notebooks) so students can try first. Every function
here is run through its checker by ``tests/test_exercises.py``: each exercise is known to be
solvable, and each checker known to accept a right answer.

    from instructor.solutions import lora_backward
    from minilora.course.checkers import check_lora_backward
    check_lora_backward(lora_backward)   # ✓ ...
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import torch


# --- chapters 01-02: the layer by hand (NumPy) ---------------------------------------------
def lora_forward(W0, A, B, x, scaling):
    """y = x·W0ᵀ + s·(x·Aᵀ)·Bᵀ: two thin matmuls, never the d × k matrix B·A."""
    return x @ W0.T + scaling * (x @ A.T) @ B.T


def lora_backward(W0, A, B, x, dy, scaling):
    """(dx, dA, dB) for y = x·W0ᵀ + s·h·Bᵀ with h = x·Aᵀ (W0 frozen: no dW0)."""
    h = x @ A.T  # (n, r)
    dB = scaling * dy.T @ h  # (d, r), B's shape
    dh = scaling * dy @ B  # (n, r)
    dA = dh.T @ x  # (r, k), A's shape
    dx = dy @ W0 + dh @ A  # both paths from x to y
    return dx, dA, dB


def merge(W0, A, B, scaling):
    """W0 + s·B·A: one (d, k) matrix computing what base + adapter computes."""
    return W0 + scaling * B @ A


def lora_init(d, k, r, rng):
    """A ~ N(0, 1/k) (r × k), B = 0 (d × r): ΔW = 0 at the start, yet A's gradient is not zero."""
    return rng.normal(0.0, 1.0 / math.sqrt(k), size=(r, k)), np.zeros((d, r))


def scaling(alpha, r, use_rslora=False):
    """α/r (LoRA), or α/√r (rsLoRA)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


# --- chapters 03-04: counting -----------------------------------------------------------------
def param_count(model, r, targets=None):
    """Σ r·(d_in + d_out) over the adapted linear layers (all nn.Linear when targets is None)."""
    from minilora.lora import find_targets

    if targets is None:
        layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    else:
        layers = [model.get_submodule(n) for n in find_targets(model, targets)]
    return sum(r * (m.in_features + m.out_features) for m in layers)


def adam_state_bytes(n_params):
    """Two fp32 moments (m, v) per parameter: 8 bytes each."""
    return 2 * 4 * n_params


# --- chapters 05-06: NF4 ----------------------------------------------------------------------
NF4_OFFSET = 0.9677083  # the outermost probability QLoRA / bitsandbytes use


def nf4_codebook():
    """Normal quantiles: 8 positive from OFFSET down to 0.5 (0.5 dropped), 7 negative, and 0."""
    q = NormalDist().inv_cdf
    positive = [q(p) for p in np.linspace(NF4_OFFSET, 0.5, 9)[:-1]]
    negative = [-q(p) for p in np.linspace(NF4_OFFSET, 0.5, 8)[:-1]]
    positive = [v / max(positive) for v in positive]
    negative = [v / max(abs(u) for u in negative) for v in negative]
    return np.array(sorted(positive + negative + [0.0]))


def nf4_quantize(w, blocksize):
    """Codes (nearest NF4 value of w / absmax) and one absmax per block."""
    codebook = torch.tensor(nf4_codebook(), dtype=torch.float32)
    blocks = w.reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks / absmax[:, None]
    codes = (scaled.reshape(-1, 1) - codebook).abs().argmin(dim=1)
    return codes, absmax


def bits_per_weight(double_quant=True, blocksize=64):
    """4-bit codes plus the scales: 32/blocksize, or 8/blocksize + 32/(blocksize·256) with DQ."""
    if double_quant:
        return 4 + 8 / blocksize + 32 / (blocksize * 256)
    return 4 + 32 / blocksize


# --- chapter 09: intrinsic dimension ------------------------------------------------------
def d90(dims, gains, full_gain):
    """The smallest d whose gain is at least 90 % of full fine-tuning's (None if none is)."""
    hits = [d for d, g in zip(dims, gains, strict=True) if g >= 0.9 * full_gain]
    return min(hits) if hits else None
