"""The fair-race protocol (minilora.lab.race) on synthetic arms whose best rate is known."""

import json
import math

import numpy as np
import pytest

from minilora.lab.race import Arm, claim, pareto_front, race


def bowl(best_lr, height=1.0, noise=0.01, diverge_above=math.inf):
    """A fake training run: the metric peaks at ``best_lr`` (log scale); seeds add noise."""

    def train(lr, seed):
        if lr > diverge_above:
            return {"acc": math.nan, "loss": math.inf}
        acc = height - (math.log10(lr) - math.log10(best_lr)) ** 2 + noise * seed
        return {"acc": acc, "loss": 1 - acc}

    return train


def test_best_rate_inside_the_grid_and_seeds_paired():
    result = race(
        [Arm("a", bowl(1e-2), [1e-3, 3e-3, 1e-2, 3e-2])], [0, 1, 2], "acc", progress=False
    )
    arm = result["a"]
    assert arm.best_lr == 1e-2 and not arm.at_edge
    assert arm.lrs == [1e-3, 3e-3, 1e-2, 3e-2]  # nothing widened
    np.testing.assert_allclose(arm.values("acc"), [1.0, 1.01, 1.02])
    assert arm.spread("acc") == pytest.approx((1.0, 1.02))


def test_grid_widened_at_the_edge_until_the_best_is_inside():
    result = race([Arm("a", bowl(1e-1), [1e-3, 1e-2])], [0, 1, 2], "acc", widen=3, progress=False)
    arm = result["a"]
    assert arm.lrs == pytest.approx([1e-3, 1e-2, 1e-1, 1.0])  # widened twice, ×10 steps
    assert arm.best_lr == pytest.approx(1e-1) and not arm.at_edge


def test_widening_is_bounded_and_an_edge_is_reported():
    result = race([Arm("a", bowl(10.0), [1e-3, 3e-3])], [0, 1, 2], "acc", widen=1, progress=False)
    assert len(result["a"].lrs) == 3 and result["a"].at_edge
    assert "edge" in result.table(["acc"])


def test_a_rate_where_any_seed_diverges_is_never_chosen():
    # the bowl peaks at 1e-1, but everything above 3e-2 diverges: the best stable rate is 3e-2,
    # and the widened 9e-2 (unstable) leaves it inside the grid
    arm = Arm("a", bowl(1e-1, diverge_above=3.1e-2), [1e-3, 1e-2, 3e-2])
    result = race([arm], [0, 1, 2], "acc", progress=False)
    assert result["a"].best_lr == pytest.approx(3e-2)
    assert not result["a"].stable(result["a"].lrs[-1]) and not result["a"].at_edge
    assert "diverged" in result.grid_table("acc")


def test_lower_is_better_selection():
    result = race(
        [Arm("a", bowl(3e-3), [1e-3, 3e-3, 1e-2])], [0, 1], "loss", higher_is_better=False,
        progress=False,
    )  # fmt: skip
    assert result["a"].best_lr == 3e-3


def test_paired_differences_and_ties():
    arms = [
        Arm("a", bowl(1e-2, 1.00), [3e-3, 1e-2, 3e-2]),
        Arm("b", bowl(1e-2, 0.95), [3e-3, 1e-2, 3e-2]),
    ]
    result = race(arms, [0, 1, 2], "acc", progress=False)
    d = result.paired("a", "b", "acc")
    np.testing.assert_allclose(d.values, [0.05, 0.05, 0.05])
    assert result.verdict("a", "b", "acc", tie=0.01) == "a"
    assert result.verdict("b", "a", "acc", tie=0.01) == "a"
    assert result.verdict("a", "b", "acc", tie=0.1) == "tie"  # inside the margin: a tie
    # on a lower-is-better metric the direction flips
    assert result.verdict("a", "b", "loss", tie=0.01, higher_is_better=False) == "a"


def test_a_seed_that_disagrees_makes_a_tie():
    def noisy(lr, seed):
        return {"acc": [0.9, 0.5, 0.9][seed]}

    def steady(lr, seed):
        return {"acc": 0.7}

    arms = [Arm("noisy", noisy, [1e-3, 1e-2, 1e-1]), Arm("steady", steady, [1e-3, 1e-2, 1e-1])]
    result = race(arms, [0, 1, 2], "acc", widen=0, progress=False)
    assert result.paired("noisy", "steady", "acc").mean > 0.05
    assert result.verdict("noisy", "steady", "acc", tie=0.0) == "tie"  # worse on seed 1


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="ascending"):
        Arm("a", bowl(1e-2), [1e-2, 1e-3])
    with pytest.raises(ValueError, match="positive"):
        Arm("a", bowl(1e-2), [0.0, 1e-3])
    with pytest.raises(ValueError, match="distinct"):
        race([Arm("a", bowl(1e-2), [1e-2]), Arm("a", bowl(1e-2), [1e-2])], [0], "acc")
    with pytest.raises(KeyError, match="val"):
        race([Arm("a", bowl(1e-2), [1e-2])], [0], "val", progress=False)
    r = race(
        [Arm("a", bowl(1e-2), [1e-2]), Arm("b", bowl(1e-2), [1e-2])], [0], "acc", progress=False
    )
    r.arms["b"].seeds = [5]
    with pytest.raises(ValueError, match="different seeds"):
        r.paired("a", "b", "acc")


def test_pareto_front():
    xs = [1.0, 2.0, 3.0, 1.5, 2.5]
    ys = [3.0, 2.0, 1.0, 3.5, 2.5]
    assert pareto_front(xs, ys) == [0, 1, 2]  # (1.5, 3.5) and (2.5, 2.5) are dominated


def test_claim_returns_its_margin_and_records_it(tmp_path, monkeypatch):
    log = tmp_path / "claims.jsonl"
    monkeypatch.setenv("MINILORA_CLAIMS", str(log))
    monkeypatch.setenv("MINILORA_NOTEBOOK", "07_rank_sweeps")
    assert claim("gap", 0.03, ">", -0.02) == pytest.approx(0.05)
    assert claim("loss", 1.2, "<=", 1.5) == pytest.approx(0.3)
    with pytest.raises(AssertionError, match="claim failed: too big: 2 is not < 1"):
        claim("too big", 2.0, "<", 1.0)
    with pytest.raises(AssertionError, match="nan"):
        claim("nan", math.nan, ">", 0.0)
    with pytest.raises(ValueError, match="op"):
        claim("x", 1.0, "==", 1.0)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["claim"] for r in records] == ["gap", "loss", "too big", "nan"]
    assert records[0]["notebook"] == "07_rank_sweeps" and records[2]["margin"] == -1.0


def test_claim_outside_a_chapter_run_is_not_recorded(tmp_path, monkeypatch):
    log = tmp_path / "claims.jsonl"
    monkeypatch.setenv("MINILORA_CLAIMS", str(log))
    monkeypatch.delenv("MINILORA_NOTEBOOK", raising=False)
    assert claim("gap", 0.03, ">", -0.02) == pytest.approx(0.05)  # still asserted
    with pytest.raises(AssertionError):
        claim("too big", 2.0, "<", 1.0)
    assert not log.exists()
