"""Worked solutions to the exercises of chapter 01 (ΔW = BA from scratch).

Each function answers one numbered exercise and returns the numbers the answer rests on;
``tests/test_instructor_ch01.py`` checks them. Sizes are the chapter's (32 × 32, r* = 4, n = 256).
"""

from __future__ import annotations

import numpy as np

from minilora.lora_numpy import (
    SGD,
    Adam,
    LoRALinear,
    cosine_lr,
    eckart_young_floor,
    fit,
    gradcheck,
    make_low_rank_task,
)

D, R_STAR, N, ALPHA, STEPS, LR = 32, 4, 256, 8, 1000, 1e-2


class DropScaleInDB(LoRALinear):
    """Exercise 1's bug: ``dB`` without the factor s (everything else right)."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.dB = self.dB / self.scaling
        return dx


def ex1_broken_backward(seed: int = 0) -> dict[str, float]:
    """Relative error of each gradient of the broken layer against central differences.

    ∂L/∂x = G·W0 + s·G·B·A: x reaches y through W0 and through A then B. With s = α/r = 2 the
    missing s makes dB half the true one: relative error 1 − 1/s = 0.5 for B; A and x stay right.
    """
    rng = np.random.default_rng(seed)
    W0 = rng.normal(0, 1 / np.sqrt(D), size=(D, D))
    layer = DropScaleInDB(W0, r=R_STAR, alpha=ALPHA, seed=seed)
    layer.B = rng.normal(size=layer.B.shape)  # B ≠ 0, or the check of dA is empty
    x = rng.normal(size=(5, D))
    G = rng.normal(size=(5, D))
    return {name: gradcheck(layer, x, G, wrt=(name,)) for name in ("A", "B", "x")}


def _train(task, r: int, seed: int = 0) -> tuple[LoRALinear, np.ndarray]:
    layer = LoRALinear(task.W0, r, ALPHA, seed=seed)
    losses = fit(layer, task.X, task.Y, STEPS, Adam(layer, lr=LR), cosine_lr(LR, STEPS))
    return layer, losses


def ex2_unwhitened(r: int = 2, seed: int = 0) -> dict[str, float]:
    """Without whitening the data metric is XᵀX/n ≠ I: the general floor (through X = QR) is what
    training reaches; the textbook Σ_{i>r} σ_i²/d is a different number."""
    task = make_low_rank_task(D, D, R_STAR, N, whiten=False, seed=seed)
    sv = np.linalg.svd(task.delta_star, compute_uv=False)
    _, losses = _train(task, r, seed)
    return {
        "general": eckart_young_floor(task.delta_star, r, task.X),
        "textbook": float(np.sum(sv[r:] ** 2) / D),
        "trained": float(losses[-100:].min()),
    }


def ex3_tied_singular_values(r: int = 2) -> dict[str, float]:
    """σ = (4, 3, 3, 1), r = 2: the floor (3² + 1²)/32 = 0.3125 is still reached, but the best
    ΔW is not unique (any direction in the σ = 3 plane completes the top one). Two inits end at
    different ΔW with the same loss."""
    task = make_low_rank_task(D, D, R_STAR, N, singular_values=[4, 3, 3, 1], seed=0)
    (l0, c0), (l1, c1) = _train(task, r, seed=0), _train(task, r, seed=1)
    d0, d1 = l0.delta_weight(), l1.delta_weight()
    return {
        "floor": eckart_young_floor(task.delta_star, r, task.X),
        "loss_seed0": float(c0[-100:].min()),
        "loss_seed1": float(c1[-100:].min()),
        "delta_w_apart": float(np.linalg.norm(d0 - d1) / np.linalg.norm(d0)),
    }


def ex4_sgd(lrs=(0.1, 0.3, 1.0), ranks=(1, 2, 3, 4, 8), seed: int = 0) -> dict:
    """SGD: the largest learning rate of the grid at which every rank reaches its floor (to 1e-6
    of the base loss) in STEPS steps, and per rank the first step within 1e-6 of its floor.

    From B = 0, SGD grows direction i of ΔW* at a rate set by σ_i, so the last direction a rank
    keeps (the smallest kept σ) is the slow one, and a small gap σ_r − σ_{r+1} slows the choice of
    which directions to keep. Measured: lr = 0.3; lr = 1 diverges at r = 1 (s = 8 makes the step
    too large for the curvature).
    """
    task = make_low_rank_task(D, D, R_STAR, N, seed=seed)
    base = float(np.mean((task.X @ task.W0.T - task.Y) ** 2))
    best_lr, steps_to_floor = None, {}
    for lr in lrs:
        reached, steps = True, {}
        for r in ranks:
            layer = LoRALinear(task.W0, r, ALPHA, seed=seed)
            with np.errstate(all="ignore"):
                losses = fit(layer, task.X, task.Y, STEPS, SGD(layer, lr=lr))
            excess = (losses - eckart_young_floor(task.delta_star, r, task.X)) / base
            ok = np.isfinite(excess) & (excess < 1e-6)
            if not ok[-1]:
                reached = False
                break
            steps[r] = int(np.argmax(ok))
        if reached:
            best_lr, steps_to_floor = lr, steps
    return {"lr": best_lr, "steps_to_floor": steps_to_floor}


def ex5_smaller_constant_lr(seed: int = 0) -> dict[str, float]:
    """A constant lr of LR/10 instead of a cosine decay, r = r*: the late-spike measure of the
    chapter (worst rise above the running minimum after step 300) for both constant rates."""
    task = make_low_rank_task(D, D, R_STAR, N, seed=seed)
    out = {}
    for name, lr in (("lr", LR), ("lr/10", LR / 10)):
        layer = LoRALinear(task.W0, R_STAR, ALPHA, seed=seed)
        losses = fit(layer, task.X, task.Y, STEPS, Adam(layer, lr=lr))
        out[name] = float((losses / np.minimum.accumulate(losses))[300:].max())
        out[name + " best"] = float(losses.min())
    return out
