"""Worked solutions to the exercises of chapter 02 (why B starts at zero).

Each function answers one numbered exercise and returns the numbers the answer rests on;
``tests/test_instructor_ch02.py`` checks them. The task is chapter 01's (32 × 32, r* = 4).
"""

from __future__ import annotations

import numpy as np

from minilora.lora_numpy import SGD, Adam, LoRALinear, fit, make_low_rank_task, mse, start_layer

D, R_STAR, N, R, ALPHA, STEPS, LR = 32, 4, 256, 4, 8, 300, 1e-2


def _task(seed: int = 0):
    return make_low_rank_task(D, D, R_STAR, N, seed=seed)


def ex1_a_zero_gradients(seed: int = 0) -> list[float]:
    """‖dB‖ at the first and the second gradient from the "A zero" start.

    dB = s·Gᵀ·(x·Aᵀ) is exactly 0 while A = 0; the first step moves A only (dA = s·(G·B)ᵀ·x ≠ 0
    because B is random), so the second gradient has dB ≠ 0.
    """
    task = _task(seed)
    layer = start_layer(task.W0, R, ALPHA, "A zero", seed=seed)
    opt = Adam(layer, lr=LR)
    norms = []
    for _ in range(2):
        _, dy = mse(layer.forward(task.X), task.Y)
        layer.backward(dy)
        norms.append(float(np.linalg.norm(layer.dB)))
        opt.step()
    return norms


def _steps_to(losses: np.ndarray, level: float) -> int:
    below = losses < level
    return int(np.argmax(below)) if below.any() else -1


def ex2_escape_saddle(noise: float = 1e-8, seed: int = 0, steps: int = 600) -> dict[str, int]:
    """Both zero plus noise of size ``noise`` on B: Adam escapes, because its first steps are
    ≈ lr·sign(g) whatever the gradient's size; the noise only has to make dA ≠ 0. Returns the
    steps to reach 1e-3 × the base loss from there and from the paper's start."""
    task = _task(seed)
    base = mse(task.X @ task.W0.T, task.Y)[0]
    noisy = start_layer(task.W0, R, ALPHA, "both zero", seed=seed)
    noisy.B = noise * np.random.default_rng(seed).normal(size=noisy.B.shape)
    paper = start_layer(task.W0, R, ALPHA, "paper", seed=seed)
    out = {}
    for name, layer in (("noisy saddle", noisy), ("paper", paper)):
        losses = fit(layer, task.X, task.Y, steps, Adam(layer, lr=LR))
        out[name] = _steps_to(losses, 1e-3 * base)
    return out


def ex3_rslora_slopes(ranks=(1, 2, 4, 8, 16, 32), n_inits: int = 32, seed: int = 0) -> dict:
    """First-step loss drop vs r with s = α/√r. SGD: η·s²·r·‖𝒢‖²/k = η·α²·‖𝒢‖²/k, slope 0.
    Adam: η·s·Σ_j ‖𝒢a_j‖₁ ∝ η·α·√r, slope +1/2."""
    task = _task(seed)
    slopes = {}
    for name in ("SGD", "Adam"):
        drops = []
        for r in ranks:
            d = []
            for k in range(n_inits):
                layer = LoRALinear(task.W0, r, ALPHA, seed=seed * 1000 + k)
                layer.scaling = ALPHA / np.sqrt(r)
                opt = SGD(layer, lr=1e-4) if name == "SGD" else Adam(layer, lr=1e-4)
                losses = fit(layer, task.X, task.Y, 1, opt)
                d.append(losses[0] - losses[1])
            drops.append(np.mean(d))
        slopes[name] = float(np.polyfit(np.log(ranks), np.log(drops), 1)[0])
    return slopes


def ex4_quarter_alpha(seed: int = 0, eps: float = 1e-12) -> float:
    """c = 1/4: (α/4, η, A0) ≡ (α, η/2, A0/2), i.e. √c = 1/2 on both. Returns the largest relative
    ΔW difference between the two runs over STEPS Adam steps (≈ 0: exact up to ε)."""
    task = _task(seed)
    c = 0.25
    runs = []
    for alpha, lr, a_scale in ((c * ALPHA, LR, 1.0), (ALPHA, np.sqrt(c) * LR, np.sqrt(c))):
        layer = LoRALinear(task.W0, R, alpha, seed=seed)
        layer.A = a_scale * layer.A
        opt = Adam(layer, lr=lr, eps=eps)
        deltas = []
        for _ in range(STEPS):
            _, dy = mse(layer.forward(task.X), task.Y)
            layer.backward(dy)
            opt.step()
            deltas.append(layer.delta_weight())
        runs.append(np.array(deltas))
    a, b = runs
    return float((np.linalg.norm(a - b, axis=(1, 2)) / np.linalg.norm(b, axis=(1, 2))).max())
