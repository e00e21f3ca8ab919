"""The worked solutions of chapter 03's exercises agree with hand arithmetic."""

import pytest

from instructor import ch03


def test_ex1_llama7b_all_linear_r16():
    n, nbytes = ch03.ex1_llama7b_all_linear(16)
    assert n == 32 * 16 * (4 * (4096 + 4096) + 3 * (11008 + 4096)) == 39_976_960
    assert nbytes == 2 * n


def test_ex2_ratio_and_best_shape():
    assert ch03.ex2_ratio(4096, 4096, 8) == 256
    assert ch03.ex2_best_shape(4096 * 4096, 8) == (4096, 4096)
    assert ch03.ex2_ratio(1024, 16384, 8) < ch03.ex2_ratio(4096, 4096, 8)


def test_ex3_own_module_counts_agree():
    predicted, measured = ch03.ex3_own_module()
    base = (20 * 30 + 30) + (30 * 30 + 30) + (30 * 5 + 5)
    lora = 4 * (20 + 30) + 4 * (30 + 30)
    assert predicted == measured == (lora, base + lora) == (440, 2_155)


def test_ex4_plain_nf4_costs_and_sgd_frees():
    out = ch03.ex4_qlora_variants()
    from minilora.budget import LLAMA_65B

    assert out["nf4 instead of nf4+dq"] == pytest.approx(
        -LLAMA_65B.total * (4.5 - (4 + 8 / 64 + 32 / 16384)) / 8
    )
    assert out["sgd instead of adam"] == pytest.approx(8 * 799_539_200)  # 8 B per adapter number


def test_ex5_rank_matching_the_model():
    r = ch03.ex5_rank_matching_model()
    assert r == pytest.approx(6_738_415_616 / (32 * (4 * 8192 + 3 * 15104)))
    assert 2048 < r < 2985.3  # between the break-even ranks of attention and MLP matrices
