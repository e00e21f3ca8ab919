"""minilora on the models students bring: GPT-2, T5, a ViT, PyTorch's attention layers, fp16.

Each case is one the homework library once got silently wrong (issue 13). Every test builds a
tiny model from a transformers config (nothing is downloaded) or from torch.nn, and checks that
minilora either gives the right result or refuses with an error that names the problem and
leaves the model as it was.
"""

from __future__ import annotations

import copy
import warnings

import peft
import pytest
import torch
import transformers
from torch import nn

import minilora
from minilora import Linear4bit, add_lora, merge_lora, quantize_model

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(model):
    return repr(model), {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    structure, values = snapshot(model)
    assert structure == before[0] and values.keys() == before[1].keys()
    assert all(torch.equal(values[k], before[1][k]) for k in values)


def randomize_B(model, scale=0.1, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in minilora.lora_layers(model).values():
            layer.lora_B.copy_(scale * torch.randn(layer.lora_B.shape, generator=gen))


# --- GPT-2: transformers' Conv1D and a tied output head ------------------------------------------
def gpt2(seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=16, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config).eval()


TOKENS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
CONV1D = ["c_attn", "c_proj", "c_fc"]


def logits(model):
    with torch.no_grad():
        return model(TOKENS).logits


def test_gpt2_conv1d_lora_equals_peft_and_merges():
    base = gpt2()
    ours = add_lora(copy.deepcopy(base), CONV1D, r=4, alpha=8)
    assert len(minilora.lora_layers(ours)) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    randomize_B(ours)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=CONV1D, fan_in_fan_out=True)
    theirs = peft.get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():
        for name, layer in minilora.lora_layers(ours).items():
            twin = theirs.base_model.model.get_submodule(name)
            twin.lora_A["default"].weight.copy_(layer.lora_A)
            twin.lora_B["default"].weight.copy_(layer.lora_B)
    y = logits(ours)
    assert (y - logits(theirs)).abs().max() <= 1e-5
    assert (y - logits(base)).abs().max() > 1e-3  # the adapters matter
    layer = ours.transformer.h[0].attn.c_attn
    assert layer.weight.shape == layer.base.weight.shape == (32, 96)  # Conv1D's (in, out)
    merged = merge_lora(ours)
    assert type(merged.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    torch.testing.assert_close(logits(merged), y, rtol=0, atol=1e-5)


def test_gpt2_quantize_model_takes_conv1d_and_keeps_the_tied_head():
    model = gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    before = minilora.model_nbytes(model)
    quantize_model(model)
    blocks = [model.transformer.h[i].attn.c_attn for i in range(2)]
    assert all(isinstance(m, Linear4bit) for m in blocks)
    assert isinstance(model.lm_head, nn.Linear)  # tied head: full precision and still tied
    assert model.lm_head.weight is model.transformer.wte.weight
    assert minilora.model_nbytes(model) < 0.6 * before  # memory goes down, not up
    y = logits(model)
    assert torch.isfinite(y).all()
    add_lora(model, CONV1D, r=2)  # QLoRA on GPT-2
    assert torch.equal(logits(model), y)


def test_gpt2_tied_head_named_explicitly_is_refused_unless_untied():
    model = gpt2()
    before = snapshot(model)
    with pytest.raises(ValueError, match="lm_head.*shares its weight.*transformer.wte.weight"):
        quantize_model(model, target_modules=["lm_head"])
    assert_unchanged(model, before)
    quantize_model(model, target_modules=["lm_head"], untie=True)
    assert isinstance(model.lm_head, Linear4bit)
    assert model.transformer.wte.weight.dtype == torch.float32


def test_merging_into_a_tied_head_is_refused_or_untied_on_request():
    model = gpt2()
    add_lora(model, ["lm_head"], r=2)
    randomize_B(model)
    y = logits(model)
    embedding = model.transformer.wte.weight.detach().clone()
    before = snapshot(model)
    with pytest.raises(ValueError, match="shared with transformer.wte.weight.*untie=True"):
        merge_lora(model)
    with pytest.raises(ValueError, match="tied weights"):
        model.lm_head.merge()
    assert_unchanged(model, before)
    merge_lora(model, untie=True)
    assert torch.equal(model.transformer.wte.weight, embedding)  # the embedding is untouched
    assert model.lm_head.weight is not model.transformer.wte.weight
    torch.testing.assert_close(logits(model), y, rtol=0, atol=1e-5)  # merged == unmerged


# --- half precision ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_base_gets_float32_adapters(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).to(dtype)
    add_lora(model, ["0", "2"], r=4)
    layer = model[0]
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    x = torch.randn(8, 16, dtype=dtype)
    y = model(x)
    assert y.dtype == dtype  # outputs are cast back to the base's dtype
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        model(x).float().pow(2).mean().backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert layer.lora_B.abs().max() > 0  # it trained


# --- 4-bit bases inside parents that read .weight ------------------------------------------------
def test_qlora_inside_multihead_attention_and_encoder_layer():
    torch.manual_seed(0)
    block = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        y_fp = block(x)
    quantize_model(block)  # linear1, linear2 and self_attn.out_proj become Linear4bit
    assert isinstance(block.self_attn.out_proj, Linear4bit)
    w = block.self_attn.out_proj.weight  # a read-only dequantized view
    with pytest.raises((AttributeError, KeyError)):  # read-only: nothing can replace it
        block.self_attn.out_proj.weight = nn.Parameter(w)
    with pytest.raises(AttributeError):
        block.self_attn.out_proj.weight = w
    add_lora(block, ["linear1", "linear2", "out_proj"], r=2)
    randomize_B(block, scale=0.0)
    for mode in ("train", "eval"):  # eval + no_grad takes the fast path, which reads .weight
        getattr(block, mode)()
        with torch.no_grad():
            y = block(x)
        assert (y - y_fp).abs().max() < 0.1  # the 4-bit rounding, nothing else
    block.train()
    block(x).sum().backward()
    assert block.self_attn.out_proj.lora_B.grad.abs().sum() > 0


def test_qlora_inside_t5():
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        decoder_start_token_id=0,
    )  # fmt: skip
    model = transformers.T5ForConditionalGeneration(config).eval()
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(1))
    quantize_model(model, skip_modules=["lm_head"])
    add_lora(model, ["q", "v"], r=2)  # wo stays a bare Linear4bit...
    out = model(input_ids=ids, labels=ids)  # ...and T5's feed-forward reads wo.weight.dtype
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert isinstance(model.encoder.block[0].layer[1].DenseReluDense.wo, Linear4bit)
    assert model.encoder.block[0].layer[0].SelfAttention.q.lora_B.grad is not None


# --- dropout where the parent reads .weight ------------------------------------------------------
def test_dropout_on_multihead_attention_out_proj_is_refused():
    mha = nn.Sequential(nn.MultiheadAttention(8, 2))
    before = snapshot(mha)
    with pytest.raises(ValueError, match="reads out_proj.weight directly.*dropout"):
        add_lora(mha, ["out_proj"], r=2, dropout=0.1)
    assert_unchanged(mha, before)
    add_lora(mha, ["out_proj"], r=2)  # without dropout it works (and is exact)


# --- gradient checkpointing ----------------------------------------------------------------------
def test_reentrant_gradient_checkpointing_reaches_the_adapters():
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32, num_labels=3,
    )  # fmt: skip
    vit = transformers.ViTForImageClassification(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the method's new name in v6
        vit.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    vit.train()
    add_lora(vit, ["q_proj", "v_proj"], r=2)
    pixels = torch.randn(2, 1, 8, 8)
    vit(pixel_values=pixels, labels=torch.tensor([0, 2])).loss.backward()
    grads = [layer.lora_B.grad for layer in minilora.lora_layers(vit).values()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
