"""Chapter 11's worked solutions: the numeric answer of exercise 2 against the real model."""

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
