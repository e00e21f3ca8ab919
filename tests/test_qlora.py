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


def test_merged_with_equals_quantizing_the_sum_and_leaves_the_layer_alone():
    torch.manual_seed(0)
    layer = Linear4bit.from_linear(nn.Linear(64, 64))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    delta = 0.01 * torch.randn(64, 64)
    target = layer.dequantize() + delta
    with pytest.warns(UserWarning):
        merged = layer.merged_with(delta)
    assert torch.equal(merged.dequantize(), dequantize_nf4(quantize_nf4(target)))
    assert all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())
    with pytest.raises(ValueError, match="shape"):
        layer.merged_with(torch.zeros(3, 3))


def test_the_packed_base_never_changes_merge_makes_a_new_one():
    """merge()/unmerge() in place on 4 bits used to move the weights by up to 0.048."""
    model = make_qlora_model(seed=3)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "lora_B"):
                m.lora_B.normal_(0, 0.05)
    old_base = model[2].base
    before = {k: v.clone() for k, v in old_base.state_dict().items()}
    with pytest.raises(ValueError, match="never changes in place"):
        model[2].merge()
    with pytest.raises(ValueError, match="unload=True"):
        merge_lora(model, unload=False)
    with pytest.warns(UserWarning, match="re-quantizes"):
        merge_lora(model)
    assert isinstance(model[2], Linear4bit) and model[2] is not old_base
    assert all(torch.equal(v, before[k]) for k, v in old_base.state_dict().items())


def test_to_dtype_leaves_the_4bit_state_alone():
    for double_quant in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 32))
        quantize_model(model, double_quant=double_quant)
        state = {k: v.clone() for k, v in model[0].state_dict().items() if k != "bias"}
        w = model[0].dequantize()
        model.to(torch.bfloat16)
        after = {k: v for k, v in model[0].state_dict().items() if k != "bias"}
        assert all(torch.equal(after[k], state[k]) and after[k].dtype == state[k].dtype
                   for k in state)  # fmt: skip
        assert torch.equal(model[0].dequantize(), w)  # not rounded through bf16 scales
        assert model[0].bias.dtype == torch.bfloat16  # the full-precision bias follows .to
        y = model(torch.randn(3, 64, dtype=torch.bfloat16))
        assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


def test_linear4bit_weight_is_a_read_only_dequantized_view():
    layer = Linear4bit.from_linear(nn.Linear(16, 8))
    assert torch.equal(layer.weight, layer.dequantize()) and layer.weight.shape == (8, 16)
    with pytest.raises(AttributeError):
        layer.weight = torch.zeros(8, 16)
    assert "weight" not in layer.state_dict()  # nothing but the packed state is stored
