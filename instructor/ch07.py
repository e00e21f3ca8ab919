"""Worked solutions to chapter 07's exercises (how much rank do you need?).

Kept apart from the notebook so students can try first; ``tests/test_instructor_ch07.py`` runs the
cheap ones and checks the numbers they answer with.

1. ``rank_race(..., use_rslora=True)``: the chapter's rank race with rsLoRA's α/√r scaling.
2. ``same_seed_phi``: φ(1, 8) between the r = 8 and r = 64 adapters of one seed at step 0 — the
   shared start alone gives a "similarity" far above the isotropic chance.
3. ``dead_units`` and ``fc2_rank_bound``: hidden units of ``fc1`` that never fire on the training
   images get no gradient into ``fc2``'s columns, which caps the rank of ``fc2``'s ΔW.
4. ``which_matrices_race``: attention q, v vs MLP vs all six on the char GPT, at about the same
   budget, each configuration at its own best learning rate (a fair race).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from minilora import add_lora, count_parameters
from minilora.lab.analysis import subspace_similarity, weight_deltas
from minilora.lab.data import load_digits, load_text
from minilora.lab.pretrain import load_pretrained
from minilora.lab.race import Arm, Race, race
from minilora.lab.train import accuracy, lm_loss_on, train_classifier, train_lm

TARGETS = ["fc1", "fc2"]


# --- exercise 1: the rank race with α/√r ---------------------------------------------------
def rank_race(
    ranks: Sequence[int] = (1, 2, 8, 64),
    seeds: Sequence[int] = (0, 1, 2),
    lrs: Sequence[float] = (3e-3, 1e-2, 3e-2),
    steps: int = 200,
    alpha: float = 8,
    use_rslora: bool = False,
    progress: bool = False,
) -> Race:
    """The chapter's LoRA arms on rotated digits, each rank at its best learning rate."""
    base = load_pretrained("digits_mlp")
    X, y = load_digits("rotated", "train")
    X_val, y_val = load_digits("rotated", "val")

    def arm(r):
        def train(lr, seed):
            model = copy.deepcopy(base)
            torch.manual_seed(seed)
            add_lora(model, TARGETS, r=r, alpha=alpha, use_rslora=use_rslora)
            train_classifier(model, X, y, steps, lr, batch_size=64, seed=seed, progress=False)
            return {"val_acc": accuracy(model, X_val, y_val)}

        return Arm(f"r={r}", train, lrs)

    return race([arm(r) for r in ranks], seeds, "val_acc", progress=progress)


# --- exercise 2: what a shared seed shares ---------------------------------------------------
def same_seed_phi(seed: int = 0, layer: str = "fc1", other_seed: int | None = None) -> float:
    """φ(1, 8) between A of r = 8 (seed ``seed``) and A of r = 64 (``other_seed``, default the
    same seed), both as initialized: no training at all."""
    base = load_pretrained("digits_mlp")
    A = {}
    for r, s in ((8, seed), (64, seed if other_seed is None else other_seed)):
        torch.manual_seed(s)
        model = add_lora(copy.deepcopy(base), TARGETS, r=r, alpha=8)
        A[r] = model.get_submodule(layer).lora_A
    return float(subspace_similarity(A[8], A[64])[0, 7])


# --- exercise 3: the cliff in fc2's spectrum -------------------------------------------------
@torch.no_grad()
def dead_units(model, X: torch.Tensor) -> torch.Tensor:
    """Boolean mask of fc1's hidden units whose ReLU output is 0 on every row of X."""
    h = F.relu(model.fc1(X))
    return (h <= 0).all(dim=0)


def fc2_rank_bound(seed: int = 0, lr: float = 1e-2, steps: int = 200) -> dict[str, int]:
    """Fully fine-tune fc1 and fc2's weights; count units dead before and after, and the rank.

    A unit dead on every training image for the whole run sends no gradient into its column of
    fc2's weight, so that column of ΔW stays exactly zero: rank(ΔW_fc2) ≤ 256 − (units dead
    before and after; those are a subset of the units dead throughout, so the bound is a check,
    not an identity).
    """
    base = load_pretrained("digits_mlp")
    X, y = load_digits("rotated", "train")
    model = copy.deepcopy(base).requires_grad_(False)
    for name in TARGETS:
        model.get_submodule(name).weight.requires_grad_(True)
    train_classifier(model, X, y, steps, lr, batch_size=64, seed=seed, progress=False)
    before, after = dead_units(base, X), dead_units(model, X)
    delta = weight_deltas(base, model, ["fc2"])["fc2"]
    zero_columns = int((delta.abs().sum(0) == 0).sum())
    s = torch.linalg.svdvals(delta)
    return {
        "dead_before": int(before.sum()),
        "dead_after": int(after.sum()),
        "dead_both": int((before & after).sum()),
        "zero_columns": zero_columns,
        "rank": int((s > 1e-5 * s[0]).sum()),
    }


# --- exercise 4: which matrices, at a fixed budget ---------------------------------------------
CONFIGS = {
    "attention q, v (r=18)": (["q_proj", "v_proj"], 18),
    "MLP fc1, fc2 (r=7)": (["fc1", "fc2"], 7),
    "all six (r=4)": (["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"], 4),
}


def which_matrices_budgets() -> dict[str, int]:
    """Trainable parameters of each configuration on the char GPT (about equal by design)."""
    gpt = load_pretrained("char_gpt")
    out = {}
    for name, (targets, r) in CONFIGS.items():
        model = add_lora(copy.deepcopy(gpt), targets, r=r, alpha=2 * r)
        out[name] = count_parameters(model)[0]
    return out


def which_matrices_race(
    seeds: Sequence[int] = (0, 1, 2),
    lrs: Sequence[float] = (3e-3, 1e-2, 3e-2),
    steps: int = 100,
    batch_size: int = 16,
    progress: bool = False,
) -> Race:
    """Each configuration at its own best learning rate (code validation loss, lower is better).

    α = 2r (scaling 2) for every configuration, as in the LoRA paper's Table 5 spirit of fixing
    everything but where the rank goes. About 27 runs of a few seconds each.
    """
    gpt = load_pretrained("char_gpt")
    code_train, code_val = load_text("code", "train"), load_text("code", "val")

    def arm(name, targets, r):
        def train(lr, seed):
            model = copy.deepcopy(gpt)
            torch.manual_seed(seed)
            add_lora(model, targets, r=r, alpha=2 * r)
            train_lm(model, code_train, steps, lr, batch_size=batch_size, seed=seed,
                     progress=False)  # fmt: skip
            return {"code_loss": lm_loss_on(model, code_val, 4)}

        return Arm(name, train, lrs)

    arms = [arm(name, targets, r) for name, (targets, r) in CONFIGS.items()]
    return race(arms, seeds, "code_loss", higher_is_better=False, progress=progress)
