"""Worked solutions to chapter 08's exercises (what fine-tuning makes a model forget).

Each function is what a student's cell would compute; ``tests/test_instructor_ch08.py`` runs them
on a tiny model (and the frontier against ``minilora.lab.race.pareto_front``). In the chapter they
run on the chapter's ``base``, ``task`` and grids.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from minilora.lab.analysis import energy_captured, weight_deltas
from minilora.lab.forgetting import ALL_LINEAR, Recipe, Task, at_level, forgetting_arm, measure
from minilora.lab.race import race


def frontier_by_hand(xs: Sequence[float], ys: Sequence[float]) -> list[int]:
    """Exercise 1: indices of the points no other point beats on both x and y (lower is better),
    from the definition: i is kept unless some j is at least as good on both and better on one
    (of two identical points, the first is kept). Sorted by x."""
    n = len(xs)
    keep = []
    for i in range(n):
        beaten = False
        for j in range(n):
            if j == i:
                continue
            no_worse = xs[j] <= xs[i] and ys[j] <= ys[i]
            better = xs[j] < xs[i] or ys[j] < ys[i]
            same_earlier = xs[j] == xs[i] and ys[j] == ys[i] and j < i
            if (no_worse and better) or same_earlier:
                beaten = True
                break
        if not beaten:
            keep.append(i)
    return sorted(keep, key=lambda i: (xs[i], ys[i]))


def frontier_gap(
    base: nn.Module,
    task: Task,
    recipe: Recipe,
    lrs: Sequence[float],
    full_lrs: Sequence[float],
    seeds: Sequence[int],
    levels: Sequence[float],
) -> np.ndarray:
    """Exercises 2 and 3: ``recipe``'s frontier minus full fine-tuning's at each matched target
    loss, seed by seed: an array (levels × seeds), nan where a run never got there.

    Exercise 2 passes ``Recipe("full", l2sp=0.1)`` with full fine-tuning's grid; exercise 3
    ``Recipe("qlora", 8)`` with LoRA r=8's (forgetting counted from the 16-bit base, so QLoRA's
    step 0 already carries the NF4 cost).
    """
    start = measure(base, task)
    arms = [
        forgetting_arm(base, Recipe("full"), task, full_lrs, start),
        forgetting_arm(base, recipe, task, lrs, start),
    ]
    result = race(arms, seeds, "target_loss", higher_is_better=False, widen=0, progress=False)
    other, full = result[recipe.label], result["full"]
    return np.array([at_level(other, level) - at_level(full, level) for level in levels])


def directions_for(base: nn.Module, tuned: nn.Module, share: float = 0.9) -> dict[str, int]:
    """Exercise 4: per block matrix, how many singular directions of ΔW = W − W0 hold ``share``
    of ‖ΔW‖_F² (chapter 07's ``energy_captured``)."""
    names = [n for n, _ in base.named_modules() if n.rsplit(".", 1)[-1] in ALL_LINEAR]
    return {
        name: int(np.searchsorted(energy_captured(delta), share) + 1)
        for name, delta in weight_deltas(base, tuned, names).items()
    }
