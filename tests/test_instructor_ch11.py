"""Chapter 11's worked solutions: the numeric answers of exercises 1, 2 and 4 on the real model."""

from instructor import ch11
from minilora import add_lora, count_parameters
from minilora.lab import smollm


def test_the_trainable_count_by_hand_matches_the_model_at_every_rank():
    assert ch11.trainable_for_rank(8) == 2_442_240  # the chapter's number
    for r in (1, 32):
        model = smollm.load_smollm()[0]
        add_lora(model, list(smollm.PROJ), r=r, alpha=2 * r)
        assert count_parameters(model)[0] == ch11.trainable_for_rank(r)
    assert ch11.adapter_file_bytes(1) == 4 * 305_280


def test_the_default_system_line_costs_16_tokens_per_prompt():
    tokenizer = smollm.load_smollm()[1]
    assert ch11.system_line_tokens(tokenizer) == 16
    assert ch11.system_line_tokens(tokenizer, "What colour is a lime?") == 16


def test_full_finetuning_state_counts_every_parameter_of_the_model():
    model = smollm.load_smollm()[0]
    assert sum(p.numel() for p in model.parameters()) == ch11.N_PARAMS
    state = ch11.full_finetuning_state_bytes()
    assert state["gradients"] + state["adam_moments"] == 12 * 134_515_008 == 1_614_180_096
    assert state["lora_r8_total"] == 12 * 2_442_240
