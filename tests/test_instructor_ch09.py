"""Chapter 09's worked exercise solutions (instructor/ch09.py): the numbers they answer, and the
experiment helpers run end to end on a tiny budget."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the instructor/ folder

from instructor import ch09  # noqa: E402
from minilora.lab.data import load_digits  # noqa: E402
from minilora.lab.pretrain import load_pretrained  # noqa: E402
from minilora.lab.race import race  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # the fixture is in conftest.py


def test_the_two_bars_of_exercise_2():
    bars = ch09.bars(0.60, 0.96)
    assert bars["metric"] == pytest.approx(0.864)
    assert bars["gain"] == pytest.approx(0.924)
    # the gain bar is higher by 0.1 × the base, whatever the numbers
    for base, full in [(0.093, 0.962), (0.68, 0.90), (0.0, 0.5)]:
        b = ch09.bars(base, full)
        assert b["gain"] - b["metric"] == pytest.approx(0.1 * base)


def test_each_bar_picks_its_d():
    dims, accs = [30, 100, 300, 1_098], [0.70, 0.85, 0.88, 0.93]
    bars = ch09.bars(0.60, 0.96)
    assert ch09.d90_by(dims, accs, bars["metric"]) == 300  # 0.88 ≥ 0.864
    assert ch09.d90_by(dims, accs, bars["gain"]) == 1_098  # only 0.93 ≥ 0.924
    assert ch09.d90_by(dims, accs, 0.99) is None


def test_experiment_helpers_run_in_a_race():
    base = load_pretrained("digits_mlp")
    X, y = load_digits("rotated", "train", n=128)
    Xv, yv = load_digits("rotated", "val", n=64)
    arms = ch09.old_recipe_arms(base, X, y, Xv, yv, dims=(10, 100), steps=2)
    arms.append(ch09.fc1_only_lora_arm(base, X, y, Xv, yv, steps=2))
    result = race(arms, seeds=[0], select="acc", progress=False)
    assert [a.name for a in result] == ["P d=10 at lr 0.1", "P d=100 at lr 0.1", "LoRA fc1 r=3"]
    assert all(0.0 <= a.mean("acc") <= 1.0 for a in result)
