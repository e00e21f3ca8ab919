"""Chapter 05's worked solutions give the numbers their docstrings state."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the instructor/ folder

from instructor.ch05 import (  # noqa: E402
    block_normalized,
    lloyd_max,
    lloyd_max_vs_nf4,
    mean_error,
    minilm_linear_weights,
    mse_of,
    offset_sweep,
    outlier_every_64th,
    partial_quantization,
    symmetric_codebook,
)
from minilora.nf4 import NF4_CODEBOOK, NF4_OFFSET  # noqa: E402


@pytest.fixture(scope="module")
def minilm():
    return minilm_linear_weights()


def test_the_sixteenth_level_is_worth_about_six_percent_of_the_error(minilm):
    sym = symmetric_codebook()
    assert len(sym) == 15 and torch.equal(sym, -sym.flip(0)) and sym[7] == 0
    nf4, symmetric = mean_error(minilm, NF4_CODEBOOK), mean_error(minilm, sym)
    assert 0.092 < nf4 < 0.095 and 0.098 < symmetric < 0.102
    assert 1.04 < symmetric / nf4 < 1.09


def test_the_published_offset_is_not_the_error_minimum(minilm):
    sweep = offset_sweep(minilm)
    best = min(sweep, key=sweep.get)
    assert best in (0.93, 0.95) and sweep[best] < sweep[NF4_OFFSET] - 0.001
    assert sweep[0.99] > sweep[NF4_OFFSET] + 0.01  # a larger offset is much worse


@pytest.mark.parametrize("seed", [0, 7])
def test_lloyd_max_lowers_the_error_and_the_entropy(one_thread, seed):
    r = lloyd_max_vs_nf4(seed)
    assert 0.86 < r["mse_ratio"] < 0.89  # measured 0.873–0.874 over seeds 0, 1, 7
    assert 0.086 < r["error_lloyd"] < 0.089 < 0.091 < r["error_nf4"] < 0.093
    assert r["entropy_lloyd"] < r["entropy_nf4"] - 0.02  # less even use, less error
    levels = r["levels"]
    assert torch.all(levels[1:] > levels[:-1]) and levels.abs().max() < 0.97  # no ±1 level
    assert not (levels == 0).any()  # and no exact zero


def test_lloyd_iteration_finds_the_known_optimum_of_a_uniform_density():
    # For a uniform density on [-1, 1] the optimal 16 levels are the cell centres.
    z = torch.linspace(-1, 1, 200_001)
    levels, _ = lloyd_max(z, torch.linspace(-0.5, 0.5, 16), iters=20_000, tol=1e-12)
    assert torch.allclose(levels, torch.linspace(-15 / 16, 15 / 16, 16), atol=1e-3)
    assert mse_of(z, levels) < mse_of(z, NF4_CODEBOOK)


def test_block_normalized_has_std_near_0_39():
    z = block_normalized(torch.randn(2**18, generator=torch.Generator().manual_seed(0)))
    assert 0.38 < z.std().item() < 0.41 and z.abs().max() == 1


def test_an_outlier_in_every_block_spoils_64_and_128_alike():
    r = outlier_every_64th()
    assert r[64] == r[128]
    assert r[64]["zero_share"] > 0.9 and r[64]["error_ordinary"] > 0.9
    assert r[64]["error_all"] < 0.2  # the whole-matrix error hides it
    assert r[32]["error_ordinary"] < 0.75 * r[64]["error_ordinary"]


def test_the_mlp_layers_move_the_embeddings_more_than_q_k_v(one_thread):
    r = partial_quantization()
    assert 0 < r["q, k, v"] < r["MLP"] < r["all"] < 0.05
    assert r["MLP"] / r["all"] > 0.45 and r["q, k, v"] / r["all"] < 0.4
