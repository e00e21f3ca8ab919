"""Tools to look inside fine-tuned weights (chapter 07: how much rank do you need?).

- ``weight_deltas(base, tuned)``: ΔW = W_tuned − W0 for every linear layer, whether the tuned
  model was fully fine-tuned (plain ``nn.Linear``) or carries LoRA (``LoRALinear``).
- ``truncate_rank(delta, r)``: the best rank-r approximation of ΔW (Eckart-Young: keep the top-r
  singular triplets); ``energy_captured(delta)``: the fraction of ‖ΔW‖_F² the top-r hold, r = 1..
- ``with_truncated_deltas(base, tuned, names, r)``: a copy of the tuned model whose chosen layers
  use W0 + (ΔW truncated to rank r) — "what if the full fine-tune had been rank r?".
- ``subspace_similarity(A1, A2)``: the LoRA paper's φ(A1, A2, i, j) = ‖U_iᵀ U_j‖_F² / min(i, j)
  between the top-i and top-j right-singular vectors of two adapters' A matrices (§7.2), and
  ``random_subspace_similarity(i, j, k)``, its expected value for unrelated random subspaces.
- ``rank_sweep(...)``: train LoRA at several ranks (plus full fine-tuning) over several seeds.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from minilora.lora import LoRALinear, add_lora, count_parameters


def _layer_weight(module: nn.Module) -> torch.Tensor:
    # For a LoRALinear, ``.weight`` is the adapted weight W0 + scaling·B·A (see minilora.lora).
    return module.weight.detach()


def weight_deltas(
    base: nn.Module, tuned: nn.Module, names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """ΔW (out, in) = tuned weight − base weight of each named linear layer."""
    deltas = {}
    for name in names:
        w0 = _layer_weight(base.get_submodule(name))
        w = _layer_weight(tuned.get_submodule(name))
        if w.shape != w0.shape:
            raise ValueError(
                f"layer {name!r}: shapes differ, {tuple(w0.shape)} vs {tuple(w.shape)}"
            )
        deltas[name] = (w - w0).clone()
    return deltas


def truncate_rank(delta: torch.Tensor, r: int) -> torch.Tensor:
    """The rank-r matrix closest to ``delta`` in Frobenius norm: U_r · diag(S_r) · V_rᵀ."""
    if r < 0:
        raise ValueError(f"rank must be >= 0, got {r}")
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    r = min(r, len(S))
    return (U[:, :r] * S[:r]) @ Vh[:r]


def energy_captured(delta: torch.Tensor) -> np.ndarray:
    """Entry r−1 is the fraction of ‖ΔW‖_F² held by its top-r singular directions (r = 1..)."""
    S = torch.linalg.svdvals(delta.double())
    energy = torch.cumsum(S**2, 0) / torch.sum(S**2)
    return energy.numpy()


@torch.no_grad()
def with_truncated_deltas(
    base: nn.Module, tuned: nn.Module, names: Sequence[str], r: int
) -> nn.Module:
    """A copy of ``tuned`` whose layers ``names`` hold W0 + truncate_rank(ΔW, r).

    Everything else (biases, other layers) stays as tuned, so r = full rank gives back ``tuned``.
    """
    model = copy.deepcopy(tuned)
    for name, delta in weight_deltas(base, tuned, names).items():
        w0 = _layer_weight(base.get_submodule(name))
        model.get_submodule(name).weight.copy_(w0 + truncate_rank(delta, r))
    return model


def subspace_similarity(A1: torch.Tensor, A2: torch.Tensor) -> np.ndarray:
    """φ[i−1, j−1] = ‖U_iᵀ U_j‖_F² / min(i, j) for i ≤ r1, j ≤ r2 (LoRA paper §7.2).

    A1 (r1, k) and A2 (r2, k) are two adapters' A matrices for the same layer; U_i holds the
    top-i right-singular vectors of A1 (columns in R^k), U_j the top-j of A2. φ = 1 means the
    smaller subspace lies inside the larger one, φ ≈ max(i, j)/k is what random ones give.
    """
    if A1.shape[1] != A2.shape[1]:
        raise ValueError(f"A1 and A2 must share in_features, got {A1.shape[1]} and {A2.shape[1]}")
    V1 = torch.linalg.svd(A1.detach().double(), full_matrices=False)[2].T  # (k, r1), by σ
    V2 = torch.linalg.svd(A2.detach().double(), full_matrices=False)[2].T  # (k, r2)
    overlap = (V1.T @ V2) ** 2  # (r1, r2): squared cosines between singular directions
    cum = overlap.cumsum(0).cumsum(1)  # cum[i−1, j−1] = ‖U_iᵀ U_j‖_F²
    i = torch.arange(1, overlap.shape[0] + 1)[:, None]
    j = torch.arange(1, overlap.shape[1] + 1)[None, :]
    return (cum / torch.minimum(i, j)).numpy()


def random_subspace_similarity(i: int, j: int, k: int) -> float:
    """E[φ] for a fixed i-dim and a uniformly random j-dim subspace of R^k: max(i, j) / k.

    Each of the j random unit vectors has expected squared projection i/k on the fixed subspace,
    so E‖U_iᵀ U_j‖_F² = i·j/k, and dividing by min(i, j) leaves max(i, j)/k.
    """
    if not (1 <= i <= k and 1 <= j <= k):
        raise ValueError(f"need 1 <= i, j <= k, got i={i}, j={j}, k={k}")
    return max(i, j) / k


def rank_sweep(
    base: nn.Module,
    train_fn: Callable[[nn.Module, int], None],
    metric_fns: dict[str, Callable[[nn.Module], float]],
    ranks: Sequence[int],
    seeds: Sequence[int],
    targets,
    alpha: float = 8,
    keep: Sequence[int | str] = (),
    progress: bool = True,
    **lora_kwargs,
) -> tuple[list[dict], dict]:
    """Fine-tune a copy of ``base`` with LoRA at each rank, and fully ("full"), for each seed.

    ``train_fn(model, seed)`` trains a model in place (it gets the LoRA rank from the model, so
    pass e.g. a lambda choosing the learning rate by ``is_lora(model)``); ``metric_fns`` maps
    names to ``f(model) -> float``. ``targets`` are the LoRA target modules; ``keep`` lists the
    ranks (and/or "full") whose trained models are returned for every seed. Extra keyword
    arguments (``use_rslora=True``, ``init="kaiming"``...) go to ``add_lora``.

    Returns ``(rows, kept)``: one row per run, ``{"method", "r", "seed", "trainable", <metrics>}``
    with ``r = None`` for full fine-tuning, and ``kept[(r_or_"full", seed)] = model``.
    """
    rows, kept = [], {}
    runs = [(r, s) for r in [*ranks, "full"] for s in seeds]
    for r, seed in tqdm(runs, desc="rank sweep", disable=not progress):
        model = copy.deepcopy(base)
        torch.manual_seed(seed)  # the LoRA init (A) depends on the seed
        if r != "full":
            add_lora(model, targets, r=r, alpha=alpha, **lora_kwargs)
        else:
            model.requires_grad_(True)
        train_fn(model, seed)
        row = {"method": "full" if r == "full" else "lora", "r": None if r == "full" else r}
        row.update(seed=seed, trainable=count_parameters(model)[0])
        row.update({name: float(fn(model)) for name, fn in metric_fns.items()})
        rows.append(row)
        if r in keep:
            kept[(r, seed)] = model
    return rows, kept


def is_lora(model: nn.Module) -> bool:
    """True if any layer of ``model`` is a ``LoRALinear``."""
    return any(isinstance(m, LoRALinear) for m in model.modules())


def _run_key(row: dict):
    return "full" if row["r"] is None else row["r"]


def summarize(rows: list[dict], metric: str) -> dict:
    """``{r or "full": (mean, min, max, trainable)}`` of ``metric`` over the seeds of each run."""
    out = {}
    for key in dict.fromkeys(_run_key(row) for row in rows):
        group = [row for row in rows if _run_key(row) == key]
        vals = [row[metric] for row in group]
        out[key] = (
            float(np.mean(vals)),
            float(np.min(vals)),
            float(np.max(vals)),
            group[0]["trainable"],
        )
    return out
