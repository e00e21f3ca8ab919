"""minilora.intrinsic: the fast Hadamard transform, the Fastfood projection and θ = θ0 + P·θ_d."""

import copy

import numpy as np
import pytest
import torch
from scipy.linalg import hadamard

from minilora.intrinsic import FastfoodProjection, IntrinsicModel, find_d90, hadamard_transform
from minilora.lab.data import load_digits
from minilora.lab.models import DigitsMLP
from minilora.lab.train import train_classifier

pytestmark = pytest.mark.usefixtures("one_thread")  # the fixture is in conftest.py


@pytest.mark.parametrize("n", [1, 2, 4, 64, 128, 512, 4096])
def test_hadamard_transform_equals_the_matrix(n):
    v = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    want = torch.tensor(hadamard(n), dtype=torch.float64) @ v
    torch.testing.assert_close(hadamard_transform(v), want, rtol=1e-12, atol=1e-10)


def test_hadamard_transform_twice_is_n_times_identity():
    v = torch.randn(2**17, dtype=torch.float64)
    torch.testing.assert_close(hadamard_transform(hadamard_transform(v)), 2**17 * v)


@pytest.mark.parametrize("n", [3, 6, 100])
def test_hadamard_transform_rejects_other_lengths(n):
    with pytest.raises(ValueError, match="power-of-two"):
        hadamard_transform(torch.randn(n))


def dense(p: FastfoodProjection) -> torch.Tensor:
    return p.columns(range(p.d))


def test_projection_is_linear_and_reproducible():
    p, q = FastfoodProjection(1000, 50, seed=3), FastfoodProjection(1000, 50, seed=3)
    a, b = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    torch.testing.assert_close(p(2 * a + b), 2 * p(a) + p(b))
    assert torch.equal(p(a.float()), q(a.float()))
    assert not torch.allclose(p(a.float()), FastfoodProjection(1000, 50, seed=4)(a.float()))
    torch.testing.assert_close(p(a), dense(p).double() @ a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("D", [1024, 85002])
def test_columns_have_length_one_and_are_nearly_orthogonal(D):
    p = FastfoodProjection(D, 32, seed=0)
    P = dense(p).double()
    norms = P.norm(dim=0)
    assert abs(norms.mean().item() - 1) < 0.05
    if D == 1024:  # D = n: every column has length exactly 1
        torch.testing.assert_close(norms, torch.ones(32, dtype=torch.float64))
    cos = (P.T @ P) / torch.outer(norms, norms)
    off = cos[~torch.eye(32, dtype=torch.bool)].abs()
    assert off.max() < 6 / np.sqrt(D)  # a random Gaussian matrix's columns: |cos| ~ 1/√D


def test_gradient_is_the_transpose():
    p = FastfoodProjection(300, 20, seed=1)
    theta_d = torch.randn(20, requires_grad=True)
    g = torch.randn(300)
    (p(theta_d) @ g).backward()
    torch.testing.assert_close(theta_d.grad, dense(p).T @ g, rtol=1e-4, atol=1e-5)


def test_projection_memory_is_linear_in_n_not_D_times_d():
    p = FastfoodProjection(85002, 8000)
    stored = sum(b.numel() for b in p.buffers())
    assert stored == 3 * p.n == 3 * 2**17  # vs 85002 × 8000 = 680 million for a dense P


@pytest.mark.parametrize("D, d", [(10, 11), (10, 0), (0, 1), (10, 2.0), (True, 1)])
def test_projection_rejects_bad_sizes(D, d):
    with pytest.raises(ValueError):
        FastfoodProjection(D, d)


def test_projection_rejects_a_wrong_theta_shape():
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        FastfoodProjection(100, 5)(torch.zeros(6))


def test_intrinsic_model_starts_as_the_base_and_trains_only_theta_d():
    torch.manual_seed(0)
    base = DigitsMLP()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = IntrinsicModel(base, d=200, seed=0)
    X, y = load_digits("rotated", "train", n=256)
    assert torch.equal(model(X), base(X))  # θ0 + P·0 = θ0, bit for bit
    assert model.D == sum(p.numel() for p in base.parameters()) == 85002
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["theta_d"]
    hist = train_classifier(model, X, y, steps=60, lr=0.1, seed=0, progress=False)
    assert np.mean(hist["loss"][-10:]) < 0.8 * np.mean(hist["loss"][:5])
    assert model.theta_d.abs().sum() > 0
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k])  # the base module itself never moved
    merged = model.to_base()
    torch.testing.assert_close(merged(X), model(X))
    assert isinstance(merged, DigitsMLP)


def test_intrinsic_model_moves_along_p_only():
    base = DigitsMLP()
    model = IntrinsicModel(copy.deepcopy(base), d=10, seed=2)
    with torch.no_grad():
        model.theta_d.copy_(torch.randn(10))
        delta = torch.cat([p.reshape(-1) for p in model.full_parameters().values()]) - model.theta0
        want = model.projection(model.theta_d)
    torch.testing.assert_close(delta, want, rtol=1e-4, atol=1e-6)


def test_intrinsic_model_rejects_a_model_without_parameters():
    with pytest.raises(ValueError, match="no parameters"):
        IntrinsicModel(torch.nn.ReLU(), d=1)


def test_find_d90():
    dims, gains = [10, 100, 1000], [0.1, 0.5, 0.7]
    assert find_d90(dims, gains, full_gain=0.7) == 1000
    assert find_d90(dims, gains, full_gain=0.55) == 100  # 0.5 ≥ 0.9 × 0.55
    assert find_d90(dims, gains, full_gain=1.0) is None
    assert find_d90([1000, 10], [0.7, 0.7], full_gain=0.7) == 10  # unsorted input
    with pytest.raises(ValueError, match="gains"):
        find_d90(dims, gains[:2], 0.7)
    with pytest.raises(ValueError, match="improve"):
        find_d90(dims, gains, 0.0)
