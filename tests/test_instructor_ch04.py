"""Chapter 04's worked solutions give the answers their docstrings state."""

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the instructor/ folder

from instructor import ch04  # noqa: E402

SEEDS = (0, 1)  # two seeds keep the test short; the margins below are far above the seed noise


def test_ex1_adapter_size_follows_the_formula_and_rank_1_is_too_thin(one_thread):
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # r = 16 > min(d, k) = 10 on the head: the docstring says so
        out = {r: ch04.ex1_rank(r, seeds=SEEDS) for r in (1, 16)}
    for r, res in out.items():
        assert res["trainable"] == res["formula"] == 1098 * r  # r·(d_in + d_out), summed
        assert 0 < res["file_bytes"] - 4 * res["trainable"] < 1024  # float32 + a small header
        assert not res["at_edge"]
    assert out[1]["acc_mean"] < 0.85  # measured 0.77 over seeds 0-2
    assert out[16]["acc_mean"] > out[1]["acc_mean"] + 0.1  # measured 0.955 vs 0.77


def test_ex2_a_new_head_alone_reads_turned_digits_worse(one_thread):
    out = ch04.ex2_head_only(seeds=SEEDS)
    assert not any(v for k, v in out.items() if k.endswith("at_edge"))
    assert out["lora_head"] < out["lora_all"] - 0.1  # measured 0.75 vs 0.93
    assert out["whole_head"] < out["lora_all"] - 0.05  # measured 0.83 vs 0.93


def test_ex3_both_errors_come_before_any_change():
    out = ch04.ex3_load_errors()
    assert "(r, alpha, use_rslora) = (4, 8.0, False)" in out["wrong_rank"]
    assert "(8, 8.0, False)" in out["wrong_rank"]
    assert out["truncated"].startswith("ValueError") and "truncated" in out["truncated"]
    assert out["unchanged"]


def test_ex4_the_trained_scale_is_the_best_one(one_thread):
    out = ch04.ex4_scale(seeds=SEEDS)
    acc, loss = out["acc"], out["loss"]
    assert min(loss, key=loss.get) == 1.0  # the loss is lowest at the trained ΔW
    assert acc[2.0] < acc[1.0] - 0.15  # measured 0.58 vs 0.93
    assert acc[0.0] < 0.2  # t = 0 is the base: 9 % on turned digits
