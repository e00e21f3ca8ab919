"""Chapter 07's worked solutions (instructor/ch07.py): the numbers the exercises answer with."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the instructor/ folder

from instructor import ch07  # noqa: E402
from minilora.lab.analysis import random_subspace_similarity  # noqa: E402


def test_a_shared_seed_makes_the_start_similar():
    # exercise 2: no training at all, yet the same seed puts A_8's rows inside A_64's
    chance = random_subspace_similarity(1, 8, 64)  # 0.125 for fc1 (k = 64)
    same = [ch07.same_seed_phi(seed) for seed in (0, 1, 2)]
    other = [ch07.same_seed_phi(seed, other_seed=seed + 10) for seed in (0, 1, 2)]
    assert min(same) > 2 * chance  # measured 0.51-0.60 (seeds 0,1,2,3,7): the shared start alone
    assert max(other) < 2 * chance  # different seeds: 0.05-0.15, about the chance level


def test_dead_units_bound_the_rank_of_fc2s_update():
    # exercise 3: every unit dead before and after has an exactly-zero column in ΔW_fc2
    out = ch07.fc2_rank_bound(seed=0, steps=50)
    assert out["dead_both"] > 0
    assert out["zero_columns"] >= out["dead_both"]
    assert out["rank"] <= 256 - out["dead_both"]


def test_which_matrices_budgets_are_matched():
    # exercise 4: exact parameter counts, r·(in + out) summed over adapted matrices and blocks
    budgets = ch07.which_matrices_budgets()
    assert budgets == {
        "attention q, v (r=18)": 2 * 2 * 18 * (64 + 64),
        "MLP fc1, fc2 (r=7)": 2 * 7 * ((64 + 256) + (256 + 64)),
        "all six (r=4)": 2 * 4 * (4 * (64 + 64) + 2 * (64 + 256)),
    }
    assert max(budgets.values()) < 1.05 * min(budgets.values())


@pytest.mark.parametrize("use_rslora", [False, True])
def test_rank_race_runs_and_keeps_the_best_inside(use_rslora):
    # exercise 1 on a tiny budget: the protocol picks a rate per arm and widens edges
    result = ch07.rank_race(ranks=(2,), seeds=(0, 1), steps=20, use_rslora=use_rslora)
    assert len(result["r=2"].lrs) >= 3
    assert 0.0 <= result["r=2"].mean("val_acc") <= 1.0
