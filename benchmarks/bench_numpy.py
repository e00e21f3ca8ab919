"""One LoRA training step in NumPy with hand-derived gradients vs the same step in PyTorch.

The step (chapter 01's layer, ``minilora.lora_numpy.LoRALinear``): forward y = x·W0ᵀ + s·x·Aᵀ·Bᵀ,
the MSE loss and its gradient, backward (dA, dB and dx, as a layer inside a network must return
dx), and one SGD update of A and B. The PyTorch twin does exactly that with autograd and
``torch.optim.SGD``, from the same W0, A, B and data, in float32; the updated A and B are checked
to agree before anything is timed.

What the comparison shows: both spend nearly all their time in the same two big matmuls
(x·W0ᵀ forward, dy·W0 backward), so the ratio says how much the bookkeeping around them costs:
NumPy's input checks and temporaries against autograd's graph.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.timing import ratio_rows, time_rounds
from minilora import lora_numpy

D = K = 1024  # d_out, d_in
R, ALPHA = 8, 16
TOKENS = 512
LR = 1e-2


def make_problem(seed: int = 0):
    """W0, x, targets y in float32, and a NumPy layer whose B is not zero."""
    rng = np.random.default_rng(seed)
    W0 = (rng.normal(size=(D, K)) / np.sqrt(K)).astype(np.float32)
    x = rng.normal(size=(TOKENS, K)).astype(np.float32)
    y = rng.normal(size=(TOKENS, D)).astype(np.float32)
    layer = lora_numpy.LoRALinear(W0, R, ALPHA, seed=seed)
    layer.B = (0.02 * rng.normal(size=(D, R))).astype(np.float32)  # B = 0 would hide dA
    return W0, x, y, layer


def numpy_step(layer: lora_numpy.LoRALinear, x: np.ndarray, y: np.ndarray, opt) -> float:
    """Forward, MSE, backward (dA, dB, dx), SGD: the step chapter 01 derives by hand."""
    loss, dy = lora_numpy.mse(layer.forward(x), y)
    layer.backward(dy)
    opt.step()
    return loss


def make_torch_twin(W0: np.ndarray, layer: lora_numpy.LoRALinear, x: np.ndarray, y: np.ndarray):
    """The same step with autograd: returns a callable doing one step, and its parameters."""
    W0_t = torch.from_numpy(W0)  # frozen: no grad
    A = torch.nn.Parameter(torch.from_numpy(layer.A.copy()))
    B = torch.nn.Parameter(torch.from_numpy(layer.B.copy()))
    x_t = torch.from_numpy(x).requires_grad_(True)  # dx is computed, as in NumPy's backward
    y_t = torch.from_numpy(y)
    opt = torch.optim.SGD([A, B], lr=LR)
    s = layer.scaling

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        x_t.grad = None
        out = x_t @ W0_t.T + s * (x_t @ A.T) @ B.T
        loss = torch.mean((out - y_t) ** 2)
        loss.backward()
        opt.step()
        return loss.item()

    return step, A, B


def run(repeats: int = 7, warmup: int = 2) -> list[dict]:
    W0, x, y, layer = make_problem()
    torch_step, A, B = make_torch_twin(W0, layer, x, y)
    opt = lora_numpy.SGD(layer, lr=LR)
    # One step each from the same start must give the same A and B (float32 rounding aside).
    loss_np, loss_t = numpy_step(layer, x, y, opt), torch_step()
    assert abs(loss_np - loss_t) < 1e-4 * abs(loss_t), (loss_np, loss_t)
    assert np.allclose(layer.A, A.detach().numpy(), atol=1e-5)
    assert np.allclose(layer.B, B.detach().numpy(), atol=1e-5)
    fns = {
        "PyTorch autograd + SGD": torch_step,
        "minilora.lora_numpy (hand-derived)": lambda: numpy_step(layer, x, y, opt),
    }
    group = f"One LoRA training step: {D}×{K}, r={R}, {TOKENS} tokens, float32, SGD"
    notes = {"minilora.lora_numpy (hand-derived)": "same A, B after one step (checked)"}
    return ratio_rows(group, time_rounds(fns, repeats, warmup), "PyTorch autograd + SGD", notes)
