"""QLoRA = minilora.add_lora on a model whose Linear layers are NF4 (minilora.Linear4bit)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minilora import (
    Linear4bit,
    add_lora,
    count_parameters,
    dequantize_nf4,
    merge_lora,
    quantize_model,
    quantize_nf4,
)
from minilora.nf4 import merge_errors


def make_qlora_model(seed=0, r=4):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
    model.append(nn.Linear(128, 4))
    quantize_model(model)
    add_lora(model, ["0", "2", "4"], r=r, alpha=2 * r)
    return model


def packed_state(model):
    return {
        k: v.clone() for k, v in model.state_dict().items() if not k.endswith(("lora_A", "lora_B"))
    }


def test_qlora_trains_only_adapters_and_never_touches_the_packed_base():
    model = make_qlora_model()
    before = packed_state(model)
    assert any(k.endswith("codes") and v.dtype == torch.uint8 for k, v in before.items())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert count_parameters(model)[0] == sum(4 * (i + o) for i, o in [(32, 128), (128, 128)]) + (
        4 * (128 + 4)
    )
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(256, 32, generator=gen)
    y = (X[:, :4] * X[:, 4:8]).argmax(1)  # a nonlinear 4-class task
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(model(X), y)
        opt.zero_grad()
        loss.backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == n.endswith(("lora_A", "lora_B")), n
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    after = packed_state(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_merge_into_4bit_base_reports_rounding_error():
    model = make_qlora_model(seed=2)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "lora_B"):
                m.lora_B.normal_(0, 0.05)
    layer = model[2]
    target = layer.base.dequantize() + layer.delta_weight().detach()
    x = torch.randn(16, 32)
    y_adapter = model(x).detach()
    with pytest.warns(UserWarning, match="re-quantizes"):
        merge_lora(model)
    assert isinstance(model[2], Linear4bit)
    errors = merge_errors(model)
    assert set(errors) == {"0", "2", "4"}
    # the recorded error is the true distance between the stored weight and W_dequant + ΔW
    err = model[2].dequantize() - target
    assert errors["2"]["max_abs"] == pytest.approx(err.abs().max().item(), rel=1e-5)
    assert errors["2"]["rel_fro"] == pytest.approx((err.norm() / target.norm()).item(), rel=1e-5)
    assert 0 < errors["2"]["rel_fro"] < 0.15
    # the merged 4-bit model is close to, but not the same function as, base + adapter
    y_merged = model(x)
    assert 0 < (y_merged - y_adapter).abs().max() < 0.2 * y_adapter.abs().max()


def test_merge_delta_equals_quantizing_the_sum():
    torch.manual_seed(0)
    layer = Linear4bit.from_linear(nn.Linear(64, 64))
    delta = 0.01 * torch.randn(64, 64)
    target = layer.dequantize() + delta
    with pytest.warns(UserWarning):
        layer.merge_delta(delta)
    assert torch.equal(layer.dequantize(), dequantize_nf4(quantize_nf4(target)))
    with pytest.raises(ValueError, match="shape"):
        layer.merge_delta(torch.zeros(3, 3))
