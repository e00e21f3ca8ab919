"""minilora.lora_numpy against PyTorch autograd and torch.optim, plus its input checks."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora.lora_numpy import (
    SGD,
    STARTS,
    Adam,
    LoRALinear,
    cmp,
    eckart_young_floor,
    fit,
    gradcheck,
    make_low_rank_task,
    mse,
    numerical_gradients,
    start_layer,
)


def random_layer(n, d_in, d_out, r, alpha=2.0, seed=0):
    """A layer with B ≠ 0 (so every gradient is non-trivial), an input x and an upstream dy."""
    rng = np.random.default_rng(seed)
    layer = LoRALinear(rng.normal(size=(d_out, d_in)), r, alpha, seed=seed)
    layer.B = rng.normal(size=(d_out, r))
    return layer, rng.normal(size=(n, d_in)), rng.normal(size=(n, d_out))


@st.composite
def shapes(draw):
    d_in, d_out = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    return draw(st.integers(1, 9)), d_in, d_out, draw(st.integers(1, min(d_in, d_out)))


@settings(max_examples=40, deadline=None)
@given(shape=shapes(), seed=st.integers(0, 2**16), alpha=st.floats(0.1, 64))
def test_forward_and_gradients_match_torch_autograd(shape, seed, alpha):
    n, d_in, d_out, r = shape
    layer, x, dy = random_layer(n, d_in, d_out, r, alpha, seed)
    y = layer.forward(x)
    dx = layer.backward(dy)

    t = {k: torch.tensor(v, requires_grad=True) for k, v in dict(x=x, A=layer.A, B=layer.B).items()}
    W0 = torch.tensor(layer.W0)
    y_t = t["x"] @ W0.T + (alpha / r) * (t["x"] @ t["A"].T) @ t["B"].T
    y_t.backward(torch.tensor(dy))

    tight = dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, y_t.detach().numpy(), **tight)
    np.testing.assert_allclose(dx, t["x"].grad.numpy(), **tight)
    np.testing.assert_allclose(layer.dA, t["A"].grad.numpy(), **tight)
    np.testing.assert_allclose(layer.dB, t["B"].grad.numpy(), **tight)


def test_scaling_is_alpha_over_r_and_shapes():
    layer = LoRALinear(np.ones((5, 7)), r=3, alpha=6)
    assert layer.scaling == 2.0
    assert layer.A.shape == (3, 7) and layer.B.shape == (5, 3)
    assert np.array_equal(layer.B, np.zeros((5, 3)))
    assert np.std(layer.A) > 0


def test_kaiming_bound_is_torchs_kaiming_uniform_with_a_sqrt5():
    d_in = 50
    w = torch.empty(20_000, d_in, dtype=torch.float64)
    torch.nn.init.kaiming_uniform_(w, a=5**0.5)
    bound = 1 / np.sqrt(d_in)  # derived in LoRALinear's docstring
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.999 * bound
    A = LoRALinear(np.ones((d_in, d_in)), r=d_in, alpha=1, init="kaiming").A
    assert np.abs(A).max() <= bound and np.abs(A).max() > 0.9 * bound


def test_gaussian_init_has_variance_one_over_d_in():
    A = LoRALinear(np.ones((400, 400)), r=400, alpha=1).A
    assert abs(A.var() * 400 - 1) < 0.02  # 160,000 draws: the std of this estimate is ~0.0035


def test_zero_init_output_equals_base_exactly():
    rng = np.random.default_rng(1)
    W0, x = rng.normal(size=(6, 9)), rng.normal(size=(4, 9))
    for init in ("gaussian", "kaiming"):
        layer = LoRALinear(W0, r=3, alpha=8, init=init)
        assert np.array_equal(layer.forward(x), x @ W0.T)


def test_forward_equals_merged_weight():
    layer, x, _ = random_layer(5, 8, 6, 3)
    np.testing.assert_allclose(layer.forward(x), x @ layer.merged_weight().T, rtol=1e-12)
    np.testing.assert_array_equal(layer.merged_weight(), layer.W0 + layer.delta_weight())
    np.testing.assert_allclose(layer.delta_weight(), layer.scaling * layer.B @ layer.A)


def test_W0_is_frozen_and_copied():
    W0 = np.ones((3, 3))
    layer = LoRALinear(W0, r=1, alpha=1)
    W0[0, 0] = 5.0
    assert layer.W0[0, 0] == 1.0
    with pytest.raises(ValueError):
        layer.W0[0, 0] = 2.0  # read-only array


def test_sgd_step_is_hand_computation():
    layer, x, dy = random_layer(4, 5, 6, 2)
    layer.forward(x)
    layer.backward(dy)
    A, B, dA, dB = layer.A.copy(), layer.B.copy(), layer.dA.copy(), layer.dB.copy()
    SGD(layer, lr=0.1).step()
    np.testing.assert_array_equal(layer.A, A - 0.1 * dA)
    np.testing.assert_array_equal(layer.B, B - 0.1 * dB)


def test_adam_steps_match_torch_optim_adam():
    layer, x, _ = random_layer(4, 5, 6, 2)
    opt = Adam(layer, lr=1e-2, betas=(0.8, 0.95), eps=1e-6)
    params = [torch.tensor(layer.A.copy()), torch.tensor(layer.B.copy())]
    topt = torch.optim.Adam(params, lr=1e-2, betas=(0.8, 0.95), eps=1e-6)
    rng = np.random.default_rng(3)
    for _ in range(3):  # the first step and two with non-trivial moments
        layer.forward(x)
        layer.backward(rng.normal(size=(4, 6)))
        params[0].grad, params[1].grad = torch.tensor(layer.dA), torch.tensor(layer.dB)
        opt.step()
        topt.step()
        np.testing.assert_allclose(layer.A, params[0].numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(layer.B, params[1].numpy(), rtol=1e-12, atol=1e-14)


def test_adam_first_step_is_lr_times_sign():
    layer, x, dy = random_layer(4, 5, 6, 2)
    A = layer.A.copy()
    layer.forward(x)
    layer.backward(dy)
    Adam(layer, lr=1e-3).step()
    np.testing.assert_allclose(A - layer.A, 1e-3 * np.sign(layer.dA), rtol=1e-6)


def test_gradcheck_agrees_and_catches_a_wrong_gradient():
    layer, x, dy = random_layer(3, 5, 4, 2, alpha=6.0)
    assert gradcheck(layer, x, dy) < 1e-7

    class ForgotScalingInDB(LoRALinear):
        def backward(self, dy):
            dx = super().backward(dy)
            self.dB = self.dB / self.scaling  # a plausible slip
            return dx

    broken = ForgotScalingInDB(layer.W0, 2, 6.0)
    broken.A, broken.B = layer.A, layer.B
    assert gradcheck(broken, x, dy, wrt=("A", "x")) < 1e-7
    assert gradcheck(broken, x, dy) > 0.1
    assert set(numerical_gradients(layer, x, dy)) == {"A", "B", "x"}


def test_cmp_reports_exact_and_difference(capsys):
    assert cmp("same", np.ones(3), torch.ones(3, dtype=torch.float64)) == 0.0
    assert "exact: True" in capsys.readouterr().out
    assert cmp("off", np.ones(3), np.ones(3) + 1e-3) == pytest.approx(1e-3)
    assert "exact: False | close: False" in capsys.readouterr().out


def test_eckart_young_floor_is_reached_and_matches_the_textbook_on_whitened_inputs():
    task = make_low_rank_task(d_in=12, d_out=10, r_star=3, n=48, seed=2)
    assert np.allclose(task.X.T @ task.X / 48, np.eye(12))
    for r in (1, 2):
        floor = eckart_young_floor(task.delta_star, r, task.X)
        textbook = np.sum(task.singular_values[r:] ** 2) / 10
        assert floor == pytest.approx(textbook, rel=1e-12)
        layer = LoRALinear(task.W0, r, alpha=r, seed=0)
        losses = fit(layer, task.X, task.Y, 1500, Adam(layer, lr=1e-2))
        assert floor * (1 - 1e-9) <= losses[-1] <= floor * (1 + 1e-3)


def test_eckart_young_floor_with_correlated_inputs_is_the_least_squares_optimum():
    """Non-whitened X: the floor equals the loss of the best rank-r fit built explicitly."""
    task = make_low_rank_task(d_in=8, d_out=6, r_star=3, n=40, whiten=False, seed=4)
    X = task.X * np.linspace(0.2, 3, 8)  # stretch the features: the metric is not the identity
    Y = X @ (task.W0 + task.delta_star).T
    Q, R = np.linalg.qr(X)
    U, s, Vt = np.linalg.svd(task.delta_star @ R.T)
    best = (U[:, :1] * s[:1]) @ Vt[:1] @ np.linalg.inv(R.T)  # rank 1
    assert eckart_young_floor(task.delta_star, 1, X) == pytest.approx(
        mse(X @ (task.W0 + best).T, Y)[0], rel=1e-10
    )


def test_starts():
    task = make_low_rank_task(d_in=8, d_out=8, r_star=2, n=16)
    base = task.X @ task.W0.T
    for start in STARTS:
        layer = start_layer(task.W0, 2, 2, start)
        moved = not np.array_equal(layer.forward(task.X), base)
        assert moved == (start == "both random")
    frozen = start_layer(task.W0, 2, 2, "both zero")
    losses = fit(frozen, task.X, task.Y, 5, SGD(frozen, lr=0.1))
    assert np.all(losses == losses[0]) and not frozen.dA.any() and not frozen.dB.any()


def test_fit_lowers_the_loss():
    task = make_low_rank_task(d_in=8, d_out=8, r_star=2, n=16)
    layer = LoRALinear(task.W0, 2, 2)
    losses = fit(layer, task.X, task.Y, 50, SGD(layer, lr=0.5))
    assert losses.shape == (51,) and losses[-1] < 0.5 * losses[0]


GOOD_W0 = np.ones((4, 6))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(r=0), "r must be >= 1"),
        (dict(r=-2), "r must be >= 1"),
        (dict(r=5), "exceeds min"),
        (dict(r=2.0), "integer"),
        (dict(W0=np.ones(6)), "W0 must be 2-D"),
        (dict(W0=np.ones((2, 2, 2))), "W0 must be 2-D"),
        (dict(W0=np.ones((4, 6), dtype=int)), "W0 must be a float"),
        (dict(W0=np.full((4, 6), np.nan)), "W0 contains NaN"),
        (dict(W0=np.full((4, 6), np.inf)), "W0 contains NaN or inf"),
        (dict(alpha=0), "alpha must be a positive"),
        (dict(alpha=-1.0), "alpha must be a positive"),
        (dict(init="xavier"), "unknown init"),
    ],
)
def test_bad_layer_arguments(kwargs, message):
    args = dict(W0=GOOD_W0, r=2, alpha=1.0) | kwargs
    with pytest.raises(ValueError, match=message):
        LoRALinear(**args)


@pytest.mark.parametrize(
    "x, message",
    [
        (np.ones((3, 5)), "d_in=6 columns"),
        (np.ones(6), "x must be 2-D"),
        (np.ones((3, 6), dtype=int), "x must be a float"),
        (np.full((3, 6), np.nan), "x contains NaN"),
        (np.full((3, 6), -np.inf), "x contains NaN or inf"),
    ],
)
def test_bad_inputs_raise_and_leave_the_layer_unchanged(x, message):
    layer = LoRALinear(GOOD_W0, 2, 1.0)
    good = np.ones((3, 6))
    layer.forward(good)
    before = (layer.A.copy(), layer.B.copy(), layer._cache)
    with pytest.raises(ValueError, match=message):
        layer.forward(x)
    assert np.array_equal(layer.A, before[0]) and np.array_equal(layer.B, before[1])
    assert layer._cache is before[2]


def test_backward_needs_forward_and_the_right_shape():
    layer = LoRALinear(GOOD_W0, 2, 1.0)
    with pytest.raises(ValueError, match="call forward"):
        layer.backward(np.ones((3, 4)))
    layer.forward(np.ones((3, 6)))
    with pytest.raises(ValueError, match="output's shape"):
        layer.backward(np.ones((3, 6)))


def test_bad_optimizer_and_helper_arguments():
    layer = LoRALinear(GOOD_W0, 2, 1.0)
    with pytest.raises(ValueError, match="learning rate"):
        SGD(layer, lr=0)
    with pytest.raises(ValueError, match="learning rate"):
        Adam(layer, lr=-1)
    with pytest.raises(ValueError, match="betas"):
        Adam(layer, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="unknown start"):
        start_layer(GOOD_W0, 2, 1.0, "B random")
    with pytest.raises(ValueError, match="float64"):
        gradcheck(LoRALinear(GOOD_W0.astype(np.float32), 2, 1.0), np.ones((2, 6)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="r_star"):
        make_low_rank_task(d_in=4, d_out=4, r_star=5)


def test_peft_gaussian_init_has_std_one_over_r():
    from minilora.lora_numpy import LoRALinear

    W0 = np.zeros((64, 512))
    for r in (1, 4, 16):
        A = LoRALinear(W0, r=r, alpha=1, seed=0, init="peft_gaussian").A
        assert abs(A.std() * r - 1) < 0.1  # 512·r samples of N(0, 1/r²)
        assert not LoRALinear(W0, r=r, alpha=1, init="peft_gaussian").B.any()


def test_cosine_lr_schedule_and_fit_applies_it():
    from minilora.lora_numpy import SGD, LoRALinear, cosine_lr, fit, make_low_rank_task

    sched = cosine_lr(0.1, 10)
    assert sched(0) == 0.1 and abs(sched(5) - 0.05) < 1e-15 and abs(sched(10)) < 1e-15
    with pytest.raises(ValueError):
        cosine_lr(0.0, 10)
    task = make_low_rank_task(8, 8, 2, 16, seed=0)
    layer = LoRALinear(task.W0, 2, 4, seed=0)
    opt = SGD(layer, lr=123.0)
    fit(layer, task.X, task.Y, 10, opt, lr_schedule=sched)
    assert opt.lr == sched(9)  # the schedule, not the constructor's lr, set the last step
