"""The worked solutions of chapter 01's exercises give the answers the chapter's theory predicts."""

import numpy as np
import pytest

from instructor import ch01


def test_ex1_missing_scaling_in_dB_is_caught_and_located():
    err = ch01.ex1_broken_backward()
    assert err["B"] == pytest.approx(0.5, abs=1e-6)  # 1 − 1/s with s = α/r = 2
    assert err["A"] < 1e-7 and err["x"] < 1e-7


def test_ex2_unwhitened_data_reaches_the_general_floor_not_the_textbook_one():
    out = ch01.ex2_unwhitened()
    assert out["trained"] == pytest.approx(out["general"], rel=1e-9)
    assert abs(out["general"] / out["textbook"] - 1) > 0.05  # measured 0.087: a different number


def test_ex3_tied_singular_values_same_floor_different_updates():
    out = ch01.ex3_tied_singular_values()
    assert out["floor"] == pytest.approx((9 + 1) / 32, rel=1e-12)
    for key in ("loss_seed0", "loss_seed1"):
        assert out[key] == pytest.approx(out["floor"], rel=1e-9)
    assert out["delta_w_apart"] > 0.1  # measured 0.59: ΔW is not unique


def test_ex4_sgd_learning_rate_and_slowest_rank():
    out = ch01.ex4_sgd()
    assert out["lr"] == 0.3
    steps = out["steps_to_floor"]
    # below r*, a larger rank keeps a smaller σ and is slower; r >= r* waits for σ = 1
    assert steps[1] < steps[2] < steps[3] < steps[4] <= steps[8]


def test_ex5_a_ten_times_smaller_constant_lr_has_no_spike_but_is_slow():
    out = ch01.ex5_smaller_constant_lr()
    assert out["lr"] > 1e3 and out["lr/10"] < 10
    assert out["lr/10 best"] > 1e6 * out["lr best"]
    assert np.isfinite(out["lr/10 best"])
