"""minilora.lab.analysis: ΔW, rank truncation, energy, subspace similarity, rank sweeps."""

import numpy as np
import pytest
import torch

from minilora.lab.analysis import (
    energy_captured,
    is_lora,
    random_subspace_similarity,
    rank_sweep,
    subspace_similarity,
    summarize,
    truncate_rank,
    weight_deltas,
    with_truncated_deltas,
)
from minilora.lab.models import DigitsMLP, MLPConfig
from minilora.lab.train import train_classifier
from minilora.lora import add_lora

pytestmark = pytest.mark.usefixtures("one_thread")  # the fixture is in conftest.py


def test_truncate_rank_is_the_best_rank_r_approximation():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(30, 20, generator=g, dtype=torch.float64)
    S = torch.linalg.svdvals(M)
    for r in (0, 1, 5, 20):
        T = truncate_rank(M, r)
        assert torch.linalg.matrix_rank(T) == r
        # Eckart-Young: the error is exactly the discarded singular values
        assert torch.linalg.norm(M - T) == pytest.approx(float(S[r:].pow(2).sum().sqrt()), abs=1e-9)
    torch.testing.assert_close(truncate_rank(M, 99), M)
    with pytest.raises(ValueError, match="rank"):
        truncate_rank(M, -1)


def test_energy_captured_is_monotone_and_reaches_one_at_the_rank():
    g = torch.Generator().manual_seed(0)
    low = torch.randn(40, 3, generator=g) @ torch.randn(3, 30, generator=g)
    e = energy_captured(low)
    assert np.all(np.diff(e) >= -1e-12) and e[-1] == pytest.approx(1.0)
    assert e[2] == pytest.approx(1.0) and e[1] < 1.0


def test_subspace_similarity_bounds_and_invariance():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(8, 32, generator=g)
    phi = subspace_similarity(A, A)
    assert phi.shape == (8, 8) and np.all(phi >= -1e-12) and np.all(phi <= 1 + 1e-9)
    np.testing.assert_allclose(np.diag(phi), 1.0, atol=1e-9)  # a subspace contains itself
    R = torch.randn(8, 8, generator=g)  # mixing rows keeps the row space: φ(r, r) = 1
    assert subspace_similarity(A, R @ A)[-1, -1] == pytest.approx(1.0)
    big = torch.cat([A, torch.randn(24, 32, generator=g)])  # A's rows inside a bigger adapter
    assert subspace_similarity(A, big)[-1, -1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="in_features"):
        subspace_similarity(A, torch.randn(4, 16))


def test_random_subspace_similarity_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    k, trials = 32, 1500  # the mean of φ has a standard error of ≈ 3 % here
    for i, j in [(1, 1), (2, 8), (8, 4)]:
        values = [
            subspace_similarity(torch.randn(i, k, generator=g), torch.randn(j, k, generator=g))[
                i - 1, j - 1
            ]
            for _ in range(trials)
        ]
        expected = random_subspace_similarity(i, j, k)
        assert expected == max(i, j) / k
        assert np.mean(values) == pytest.approx(expected, rel=0.15)
    with pytest.raises(ValueError):
        random_subspace_similarity(0, 1, 4)


def _tuned_pair():
    torch.manual_seed(0)
    base = DigitsMLP(MLPConfig(n_hidden=16))
    tuned = DigitsMLP(MLPConfig(n_hidden=16))
    tuned.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return base, tuned


def test_weight_deltas_full_and_lora():
    base, tuned = _tuned_pair()
    d = weight_deltas(base, tuned, ["fc1", "fc2"])
    torch.testing.assert_close(d["fc1"], tuned.fc1.weight - base.fc1.weight)
    lora = DigitsMLP(MLPConfig(n_hidden=16))
    lora.load_state_dict(base.state_dict())
    torch.manual_seed(1)
    add_lora(lora, ["fc1"], r=2, alpha=4)
    with torch.no_grad():
        lora.fc1.lora_B.normal_()
    torch.testing.assert_close(weight_deltas(base, lora, ["fc1"])["fc1"], lora.fc1.delta_weight())
    assert torch.linalg.matrix_rank(weight_deltas(base, lora, ["fc1"])["fc1"]) == 2
    with pytest.raises(ValueError, match="shapes"):
        weight_deltas(base, DigitsMLP(MLPConfig(n_hidden=8)), ["fc1"])


def test_with_truncated_deltas_interpolates_base_and_tuned():
    base, tuned = _tuned_pair()
    x = torch.randn(5, 64)
    full_rank = with_truncated_deltas(base, tuned, ["fc1", "fc2"], 64)
    torch.testing.assert_close(full_rank(x), tuned(x))
    zero = with_truncated_deltas(base, tuned, ["fc1"], 0)
    torch.testing.assert_close(zero.fc1.weight, base.fc1.weight)
    torch.testing.assert_close(zero.fc2.weight, tuned.fc2.weight)  # other layers stay tuned
    assert torch.equal(tuned.fc1.weight, tuned.fc1.weight)  # the input model is not modified


def test_rank_sweep_rows_parameters_and_summary():
    base = DigitsMLP(MLPConfig(n_hidden=16))
    X = torch.randn(40, 64, generator=torch.Generator().manual_seed(0))
    y = (X[:, 0] > 0).long()

    def fit(model, seed):
        train_classifier(model, X, y, 5, 1e-2, seed=seed, progress=False)

    rows, kept = rank_sweep(
        base, fit, {"one": lambda m: 1.0}, [1, 2], [0, 1], ["fc1", "fc2"], keep=[2], progress=False
    )
    assert [(r["r"], r["seed"]) for r in rows] == [
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
        (None, 0),
        (None, 1),
    ]
    # LoRA on fc1 (16 × 64) and fc2 (16 × 16): r·(64 + 16) + r·(16 + 16) = 112·r
    assert [r["trainable"] for r in rows[:4]] == [112, 112, 224, 224]
    assert rows[-1]["trainable"] == sum(p.numel() for p in base.parameters())
    assert set(kept) == {(2, 0), (2, 1)} and all(is_lora(m) for m in kept.values())
    assert not is_lora(base)  # the base itself was never touched
    summary = summarize(rows, "one")
    assert list(summary) == [1, 2, "full"] and summary[2] == (1.0, 1.0, 1.0, 224)
