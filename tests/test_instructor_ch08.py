"""Chapter 08's worked solutions (instructor/ch08.py) give the right answers on small cases."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the instructor/ folder

from instructor import ch08  # noqa: E402
from minilora.lab.forgetting import Recipe, finetune, measure, prepare  # noqa: E402
from minilora.lab.race import pareto_front  # noqa: E402


@pytest.fixture
def base(tiny_char_gpt):
    return tiny_char_gpt


@pytest.fixture
def task(two_domain_task):
    return two_domain_task(steps=8)


def test_frontier_by_hand_matches_pareto_front():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 30):
        xs, ys = rng.random(n).tolist(), rng.random(n).tolist()
        assert ch08.frontier_by_hand(xs, ys) == pareto_front(xs, ys)
    # a hand-checked case: (3, 1) and (1, 3) trade off, (2, 2) too, (3, 3) is beaten
    assert ch08.frontier_by_hand([3, 1, 2, 3], [1, 3, 2, 3]) == [1, 2, 0]
    # ties: the same point twice is kept once, as pareto_front does
    assert ch08.frontier_by_hand([1, 1], [2, 2]) == pareto_front([1, 1], [2, 2]) == [0]


def test_frontier_gap_of_a_negligible_pull_is_zero(base, task):
    # λ = 1e-12: the same runs as plain full fine-tuning up to float rounding, so the same frontier
    level = measure(base, task)["target_loss"] - 0.01
    recipe = Recipe("full", l2sp=1e-12)
    gap = ch08.frontier_gap(base, task, recipe, [1e-3, 1e-2], [1e-3, 1e-2], [0, 1], [level])
    assert gap.shape == (1, 2)
    np.testing.assert_allclose(gap, 0.0, atol=1e-4)  # float rounding only


def test_frontier_gap_of_qlora_starts_at_the_nf4_cost(base, task):
    start = measure(base, task)
    cost = measure(prepare(base, Recipe("qlora", 4)), task)["source_loss"] - start["source_loss"]
    # a level above the base's target loss: every run "reaches" it at step 0
    gap = ch08.frontier_gap(base, task, Recipe("qlora", 4), [1e-2], [1e-3], [0],
                            levels=[start["target_loss"] + 1.0])  # fmt: skip
    assert gap[0, 0] == pytest.approx(cost)


def test_directions_for_counts_the_rank_of_the_update(base, task):
    tuned = finetune(base, Recipe("full"), 1e-2, task, keep_model=True)["model"]
    with torch.no_grad():  # a rank-1 change in one matrix: one direction holds all of it
        tuned.get_submodule("blocks.0.attn.q_proj").weight.copy_(
            base.get_submodule("blocks.0.attn.q_proj").weight
            + torch.outer(torch.ones(16), torch.ones(16))
        )
    counts = ch08.directions_for(base, tuned)
    assert len(counts) == 6 and counts["blocks.0.attn.q_proj"] == 1
    assert all(1 <= c <= 16 for c in counts.values())
