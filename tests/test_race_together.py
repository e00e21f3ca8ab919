"""``arm_together``: an arm whose runs are trained in batches gives the race the same results."""

import pytest

from minilora.lab.race import Arm, arm_together, race


def score(lr, seed):  # best at lr = 1e-2 (log-distance), seed noise of ±0.01
    import math

    return {"acc": 1 - abs(math.log10(lr) + 2) / 3 + 0.01 * (seed % 3 - 1)}


def test_same_race_as_one_run_at_a_time_with_few_calls():
    calls = []

    def train_many(runs):
        calls.append(list(runs))
        return [score(lr, seed) for lr, seed in runs]

    seeds = [0, 1, 2]
    # the grid's best (1e-2) is at its top edge: race widens it once, by the last step (×10/3)
    together = race(
        [arm_together("a", train_many, (1e-3, 3e-3, 1e-2), seeds)], seeds, "acc", progress=False
    )
    alone = race([Arm("a", score, (1e-3, 3e-3, 1e-2))], seeds, "acc", progress=False)
    assert together["a"].runs == alone["a"].runs
    assert together["a"].lrs == pytest.approx([1e-3, 3e-3, 1e-2, 1e-2 * 1e-2 / 3e-3])
    # one call for the grid × seeds, one for the widened rate × seeds
    assert [len(c) for c in calls] == [9, 3]
    assert sorted(calls[0]) == sorted((lr, s) for lr in (1e-3, 3e-3, 1e-2) for s in seeds)


def test_a_wrong_number_of_results_is_an_error():
    arm = arm_together("a", lambda runs: [score(*runs[0])], (1e-3, 1e-2), [0, 1])
    with pytest.raises(ValueError, match="returned 1 results for 4 runs"):
        arm.train(1e-3, 0)
