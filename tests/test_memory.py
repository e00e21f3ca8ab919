"""``minilora.lab.memory``: the activation count per block equals what autograd really saves."""

import copy

import pytest
import torch

from minilora import add_lora
from minilora.lab.memory import activation_bytes, llama_activation_numbers, saved_activation_bytes

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
D, F_, HEADS, KV_HEADS, VOCAB, BATCH, SEQ, R = 64, 172, 4, 2, 97, 2, 32, 8
D_KV = D * KV_HEADS // HEADS  # grouped-query attention: k and v are narrower than q


def tiny_llama(n_layers: int, attention: str):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=D,
        intermediate_size=F_,
        num_hidden_layers=n_layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        vocab_size=VOCAB,
        max_position_embeddings=SEQ,
        attn_implementation=attention,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def measured(n_layers: int, attention: str, lora: bool, checkpointing: bool = False) -> int:
    model = tiny_llama(n_layers, attention)
    if lora:
        model = add_lora(copy.deepcopy(model), ALL_LINEAR, r=R)
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    return saved_activation_bytes(model, lambda m: m(input_ids=ids, labels=ids).loss)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("lora", [False, True])
def test_one_block_saves_exactly_the_counted_numbers(one_thread, attention, lora):
    per_block = measured(2, attention, lora) - measured(1, attention, lora)  # fp32: 4 bytes each
    expected = llama_activation_numbers(
        D, F_, HEADS, SEQ, d_kv=D_KV, lora_r=R if lora else 0, attention=attention
    )
    assert per_block == 4 * BATCH * SEQ * expected


@pytest.mark.parametrize("lora", [False, True])
def test_the_whole_step_is_counted_up_to_small_tables(one_thread, lora):
    # what the formula leaves out: RoPE's cos/sin, the token ids; a few percent on this tiny model
    counted = activation_bytes(
        D,
        F_,
        HEADS,
        3,
        VOCAB,
        BATCH,
        SEQ,
        d_kv=D_KV,
        lora_r=R if lora else 0,
        bytes_per_number=4,
    )
    real = measured(3, "sdpa", lora)
    assert 0 < real - sum(counted.values()) < 0.03 * real


def test_checkpointing_keeps_the_block_inputs_only(one_thread):
    # the forward pass keeps each block's input; backward rebuilds one block at a time, so the
    # peak adds one block's activations (counted in ``blocks``, not saved during the forward)
    counted = activation_bytes(
        D,
        F_,
        HEADS,
        4,
        VOCAB,
        BATCH,
        SEQ,
        d_kv=D_KV,
        lora_r=R,
        checkpointing=True,
        bytes_per_number=4,
    )
    one_block = 4 * BATCH * SEQ * llama_activation_numbers(D, F_, HEADS, SEQ, d_kv=D_KV, lora_r=R)
    real = measured(4, "sdpa", lora=True, checkpointing=True)
    forward_kept = sum(counted.values()) - one_block
    assert 0 <= real - forward_kept < 0.03 * real
    assert real < 0.2 * measured(4, "sdpa", lora=True)


def test_lora_does_not_shrink_activations():
    # 7B-shaped block: LoRA's saved numbers differ from full fine-tuning's by 7r - 2d only
    full = llama_activation_numbers(4096, 11008, 32, 512)
    lora = llama_activation_numbers(4096, 11008, 32, 512, lora_r=64)
    assert full - lora == 2 * 4096 - 7 * 64 and lora / full > 0.9
    with pytest.raises(ValueError, match="attention"):
        llama_activation_numbers(64, 172, 4, 32, attention="flash")
