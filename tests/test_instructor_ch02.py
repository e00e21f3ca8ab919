"""The worked solutions of chapter 02's exercises give the answers the chapter's theory predicts."""

import pytest

from instructor import ch02


def test_ex1_a_zero_gets_dB_only_at_the_second_gradient():
    first, second = ch02.ex1_a_zero_gradients()
    assert first == 0.0 and second > 0.0


def test_ex2_adam_escapes_the_saddle_from_tiny_noise():
    out = ch02.ex2_escape_saddle()
    assert out["noisy saddle"] > 0 and out["paper"] > 0  # both reach 1e-3 × base loss
    assert out["noisy saddle"] < 2 * out["paper"]  # measured 93 vs 128 steps


def test_ex3_rslora_slopes():
    slopes = ch02.ex3_rslora_slopes(n_inits=16)
    assert slopes["SGD"] == pytest.approx(0.0, abs=0.1)
    assert slopes["Adam"] == pytest.approx(0.5, abs=0.1)


def test_ex4_quarter_alpha_is_half_lr_and_half_init():
    assert ch02.ex4_quarter_alpha() < 1e-6
