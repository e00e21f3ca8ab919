"""Every homework checker accepts the reference solution and rejects typical wrong answers.

The reference solutions live in ``instructor/solutions.py``; each wrong answer below is a mistake
students make, and the test pins the part of the message that names it.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the instructor/ folder

from instructor import solutions as sol  # noqa: E402
from minilora.course.checkers import (  # noqa: E402
    ExerciseError,
    check_adam_state_bytes,
    check_bits_per_weight,
    check_d90,
    check_lora_backward,
    check_lora_forward,
    check_lora_init,
    check_merge,
    check_nf4_codebook,
    check_nf4_quantize,
    check_param_count,
    check_scaling,
)
from minilora.lab.models import DigitsMLP  # noqa: E402
from minilora.nf4 import NF4_CODEBOOK  # noqa: E402


def rejects(check, answer, message, *args, **kwargs):
    with pytest.raises(ExerciseError, match=message):
        check(*args, answer, **kwargs) if args else check(answer, **kwargs)


def test_exercise_error_is_an_assertion_error():
    assert issubclass(ExerciseError, AssertionError)


# --- forward ---------------------------------------------------------------------------------
def test_forward_accepts_the_solution_and_a_torch_version(capsys):
    assert check_lora_forward(sol.lora_forward) is True
    assert "✓" in capsys.readouterr().out

    def torch_forward(W0, A, B, x, s):
        W0, A, B, x = (torch.tensor(a) for a in (W0, A, B, x))
        return x @ W0.T + s * (x @ A.T) @ B.T

    assert check_lora_forward(torch_forward)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda W0, A, B, x, s: x @ W0.T + (x @ A.T) @ B.T, "scaling α/r is missing"),
        (lambda W0, A, B, x, s: x @ W0.T, "LoRA term s·x·Aᵀ·Bᵀ is missing"),
        (lambda W0, A, B, x, s: s * (x @ A.T) @ B.T, "add the frozen path"),
        (lambda W0, A, B, x, s: (x @ W0.T + s * (x @ A.T) @ B.T).T, r"\(7, 3\).*did you transpose"),
        (lambda W0, A, B, x, s: x @ W0 + s * (x @ A) @ B, "raised ValueError.*transpose"),
        (lambda W0, A, B, x, s: x @ W0.T + (x @ A.T) @ B.T / s, "divide α by r"),
    ],
)
def test_forward_rejects(wrong, message):
    rejects(check_lora_forward, wrong, message)


def test_forward_rejects_in_place_changes_and_none():
    def in_place(W0, A, B, x, s):
        W0 *= 2
        return x @ W0.T

    rejects(check_lora_forward, in_place, "changed its input W0 in place")
    rejects(check_lora_forward, lambda *a: None, "forget a `return`")


# --- backward --------------------------------------------------------------------------------
def test_backward_accepts_the_solution():
    assert check_lora_backward(sol.lora_backward)


def _backward_with(**changes):
    def fn(W0, A, B, x, dy, s):
        dx, dA, dB = sol.lora_backward(W0, A, B, x, dy, s)
        grads = {"dx": dx, "dA": dA, "dB": dB}
        for name, change in changes.items():
            grads[name] = change(grads[name], W0, A, B, x, dy, s)
        return grads["dx"], grads["dA"], grads["dB"]

    return fn


@pytest.mark.parametrize(
    "wrong, message",
    [
        (
            _backward_with(dA=lambda g, *a: g.T),
            r"dA has shape \(5, 2\) but A is \(2, 5\): did you transpose",
        ),
        (_backward_with(dB=lambda g, *a: g.T), r"dB has shape \(2, 7\) but B is \(7, 2\)"),
        (
            _backward_with(dA=lambda g, *a: g / a[-1]),
            "factor of 0.4: the scaling α/r is missing from dA",
        ),
        (_backward_with(dB=lambda g, *a: g * a[-1]), "applied twice in dB"),
        (_backward_with(dA=lambda g, *a: -g), "dA has the wrong sign"),
        (_backward_with(dx=lambda g, W0, A, B, x, dy, s: dy @ W0), "LoRA path s·dy·B·A is missing"),
        (
            _backward_with(dx=lambda g, W0, A, B, x, dy, s: s * dy @ B @ A),
            "frozen path dy·W0 is missing",
        ),
        (
            lambda W0, A, B, x, dy, s: sol.lora_backward(W0, A, B, x, dy, s)[::-1],
            "return \\(dx, dA, dB\\)",
        ),
        (
            lambda W0, A, B, x, dy, s: sol.lora_backward(W0, A, B, x, dy, s)[:2],
            "return three gradients",
        ),
    ],
)
def test_backward_rejects(wrong, message):
    rejects(check_lora_backward, wrong, message)


# --- merge -----------------------------------------------------------------------------------
def test_merge_accepts_the_solution():
    assert check_merge(sol.merge)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda W0, A, B, s: W0 + B @ A, "scaling α/r is missing from ΔW"),
        (lambda W0, A, B, s: s * B @ A, "ΔW alone"),
        (lambda W0, A, B, s: (W0 + s * B @ A).T, "did you transpose"),
        (lambda W0, A, B, s: W0 + s * A @ B, "raised ValueError"),
        (lambda W0, A, B, s: W0 - s * B @ A, "unmerging"),
    ],
)
def test_merge_rejects(wrong, message):
    rejects(check_merge, wrong, message)


# --- init ------------------------------------------------------------------------------------
def test_init_accepts_the_solution_and_uniform():
    assert check_lora_init(sol.lora_init)
    assert check_lora_init(lambda d, k, r, rng: (rng.uniform(-1, 1, (r, k)), np.zeros((d, r))))


@pytest.mark.parametrize(
    "wrong, message",
    [
        (
            lambda d, k, r, rng: (rng.normal(size=(r, k)), rng.normal(size=(d, r))),
            "B must start at zero",
        ),
        (lambda d, k, r, rng: (np.zeros((r, k)), np.zeros((d, r))), "A is all zeros"),
        (lambda d, k, r, rng: (np.full((r, k), 0.1), np.zeros((d, r))), "the same number"),
        (
            lambda d, k, r, rng: (rng.normal(size=(k, r)), np.zeros((d, r))),
            r"A has shape \(5, 2\).*transpose",
        ),
        (
            lambda d, k, r, rng: (np.random.default_rng(0).normal(size=(r, k)), np.zeros((d, r))),
            "from `rng`",
        ),
        (lambda d, k, r, rng: rng.normal(size=(r, k)), "return two matrices"),
    ],
)
def test_init_rejects(wrong, message):
    rejects(check_lora_init, wrong, message)


# --- scaling ---------------------------------------------------------------------------------
def test_scaling_accepts_the_solution():
    assert check_scaling(sol.scaling)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda a, r, rs: r / a, "r/α: it is α/r"),
        (lambda a, r, rs: a / r, "use_rslora=True divides by √r"),
        (lambda a, r, rs: a / math.sqrt(r), "rsLoRA's scaling, but use_rslora=False"),
        (lambda a, r, rs: a * r, "α·r"),
        (lambda a, r: a / r, "must take three arguments"),
    ],
)
def test_scaling_rejects(wrong, message):
    rejects(check_scaling, wrong, message)


# --- parameter count -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlp():
    return DigitsMLP()  # fc1 64→256, fc2 256→256, head 256→10


def test_param_count_accepts_the_solution(mlp):
    for r in (1, 4, 8):
        assert check_param_count(mlp, r, sol.param_count(mlp, r))
    assert check_param_count(mlp, 2, sol.param_count(mlp, 2, ["fc1"]), targets=["fc1"])


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda m, r: sum(l.weight.numel() for l in (m.fc1, m.fc2, m.head)), "full fine-tuning"),
        (
            lambda m, r: sum(2 * r * l.out_features for l in (m.fc1, m.fc2, m.head)),
            "assumes square",
        ),
        (lambda m, r: sol.param_count(m, r) + 256 + 256 + 10, "LoRA keeps the biases frozen"),
        (lambda m, r: sol.param_count(m, r) - r * (256 + 10), "leaves out layer 'head'"),
        (lambda m, r: sol.param_count(m, r) // 2, "count both A"),
        (lambda m, r: sum(p.numel() for p in m.parameters()), "every parameter of the model"),
        (lambda m, r: 12345, "per layer it is r·\\(d_in \\+ d_out\\)"),
        (lambda m, r: 1.5, "whole number"),
    ],
)
def test_param_count_rejects(mlp, wrong, message):
    rejects(check_param_count, wrong(mlp, 4), message, mlp, 4)


# --- NF4 -------------------------------------------------------------------------------------
def test_nf4_codebook_accepts_the_solution_and_the_table():
    assert check_nf4_codebook(sol.nf4_codebook())
    assert check_nf4_codebook(NF4_CODEBOOK)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (np.linspace(-1, 1, 16), "0 is not in the codebook"),  # symmetric, no zero
        (np.concatenate([np.linspace(-1, 0, 8), np.linspace(1 / 8, 1, 8)]), "evenly spaced"),
        (sol.nf4_codebook() * 2.5, r"normalize them to \[-1, 1\]"),
        (sol.nf4_codebook()[::-1], "increasing order"),
        (sol.nf4_codebook()[:15], "16 values"),
        (-sol.nf4_codebook()[::-1], "8 negative and 7 positive"),
    ],
)
def test_nf4_codebook_rejects(wrong, message):
    rejects(check_nf4_codebook, wrong, message)


def test_nf4_codebook_rejects_other_quantile_probabilities():
    from statistics import NormalDist

    q = NormalDist().inv_cdf
    pos = [q(p) for p in np.linspace(0.99, 0.5, 9)[:-1]]
    neg = [-q(p) for p in np.linspace(0.99, 0.5, 8)[:-1]]
    values = sorted([v / max(pos) for v in pos] + [v / max(map(abs, neg)) for v in neg] + [0.0])
    rejects(check_nf4_codebook, values, "check the probabilities")


def test_nf4_quantize_accepts_the_solution():
    assert check_nf4_quantize(sol.nf4_quantize)


def _global_absmax(w, blocksize):
    absmax = w.abs().max()
    codes = (w.reshape(-1, 1) / absmax - NF4_CODEBOOK).abs().argmin(dim=1)
    return codes, absmax


def _signed_max(w, blocksize):
    blocks = w.reshape(-1, blocksize)
    return sol.nf4_quantize(w, blocksize)[0], blocks.amax(dim=1)


def _floor_codes(w, blocksize):
    codes, absmax = sol.nf4_quantize(w, blocksize)
    scaled = (w.reshape(-1, blocksize) / absmax[:, None]).reshape(-1)
    return torch.bucketize(scaled, NF4_CODEBOOK, right=True) - 1, absmax


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_global_absmax, "one absmax for the whole tensor"),
        (_signed_max, r"largest \|w\| \(abs first\)"),
        (_floor_codes, "off by one: round to the \\*nearest\\*"),
    ],
)
def test_nf4_quantize_rejects(wrong, message):
    rejects(check_nf4_quantize, wrong, message)


def test_bits_per_weight():
    assert check_bits_per_weight(sol.bits_per_weight(True))
    assert check_bits_per_weight(sol.bits_per_weight(False), double_quant=False)
    assert check_bits_per_weight(4.127)  # the rounded figure students quote
    rejects(check_bits_per_weight, 4, "codes only")
    rejects(check_bits_per_weight, 4.5, "without double quantization")
    rejects(check_bits_per_weight, 4.125, "each block of 256 absmax values")
    rejects(check_bits_per_weight, 4.127, "with double quantization", double_quant=False)


def test_adam_state_bytes():
    n = 7_000_000
    assert check_adam_state_bytes(n, sol.adam_state_bytes(n))
    rejects(check_adam_state_bytes, 4 * n, "one moment only", n)
    rejects(check_adam_state_bytes, 16 * n, "whole mixed-precision", n)
    rejects(check_adam_state_bytes, 12 * n, "master weights", n)


def test_d90():
    dims, gains, full = [10, 100, 1000, 10000], [0.05, 0.4, 0.75, 0.78], 0.8
    assert sol.d90(dims, gains, full) == 1000
    assert check_d90(dims, gains, full, sol.d90(dims, gains, full))
    rejects(check_d90, 10000, "a smaller d does too", dims, gains, full)
    rejects(check_d90, 100, "below 0.9", dims, gains, full)
    rejects(check_d90, 10000, "matches full fine-tuning", dims, [0.05, 0.4, 0.75, 0.8], full)
    rejects(check_d90, 50, "not one of the dimensions", dims, gains, full)
    rejects(check_d90, 1000, "the answer is None", dims, [0.0, 0.1, 0.2, 0.3], full)
    assert check_d90([1, 2], [0.1, 0.2], 0.9, None)  # nothing reached 90 %


def test_param_count_on_a_model_that_already_has_lora_or_4bit_layers():
    from minilora import add_lora, quantize_model

    wrapped = add_lora(DigitsMLP(), ["fc1", "fc2", "head"], r=4)
    assert check_param_count(wrapped, 4, 4 * (320 + 512 + 266))  # each layer counted once
    assert check_param_count(quantize_model(DigitsMLP()), 2, 2 * (320 + 512 + 266))
