"""Worked solutions to chapter 11's exercises (QLoRA on SmolLM2-135M-Instruct).

Exercise 2 has a number for an answer (checked in tests/test_instructor_ch11.py); exercises 1 and
3 are experiments, whose solution is the code below (run it, then read the numbers).
"""

from __future__ import annotations

import re

import torch

from minilora import add_lora, quantize_model, unload_lora
from minilora.lab import smollm

# SmolLM2-135M: d_model 576, 3 key/value heads of 64 (k, v: 576 -> 192), MLP 1536, 30 blocks.
SHAPES = {
    "q_proj": (576, 576),
    "k_proj": (576, 192),
    "v_proj": (576, 192),
    "o_proj": (576, 576),
    "gate_proj": (576, 1536),
    "up_proj": (576, 1536),
    "down_proj": (1536, 576),
}
N_BLOCKS = 30


def trainable_for_rank(r: int) -> int:
    """Exercise 2: r·(k + d) per adapted (k -> d) matrix, seven per block, 30 blocks."""
    return N_BLOCKS * sum(r * (k + d) for k, d in SHAPES.values())


def adapter_file_bytes(r: int) -> int:
    """Exercise 2: the adapter file is its fp32 tensors (4 bytes each) plus a small header."""
    return 4 * trainable_for_rank(r)


def four_bit_base():
    return quantize_model(smollm.load_smollm()[0], target_modules=[re.compile(r".*_proj")])


def lr_sweep(lrs=(3e-4, 1e-3, 3e-3), seed=0, steps=10, r=8, alpha=16):
    """Exercise 1: format, correctness and perplexity after training at each learning rate."""
    model, tokenizer = four_bit_base(), smollm.load_smollm()[1]
    train, test = smollm.json_answer_data()
    text = smollm.general_text()
    results = {}
    for lr in lrs:
        torch.manual_seed(seed)
        add_lora(model, list(smollm.PROJ), r=r, alpha=alpha)
        smollm.train_adapter(model, tokenizer, train, steps, lr, seed, progress=False)
        replies = smollm.generate(model, tokenizer, [row["question"] for row in test], 16)
        results[lr] = {
            **smollm.score_replies(replies, test),
            "perplexity": smollm.perplexity(model, tokenizer, text),
        }
        unload_lora(model)
    return results


def wrong_answers(model, tokenizer):
    """Exercise 3: the held-out questions the adapted model gets wrong, with the base's reply.

    ``model`` carries a trained adapter; the base's replies come from the same model inside
    ``disable_lora``, asked in plain words (no format requested).
    """
    from minilora import disable_lora

    _, test = smollm.json_answer_data()
    questions = [row["question"] for row in test]
    replies = smollm.generate(model, tokenizer, questions, 16)
    with disable_lora(model):
        plain = smollm.generate(model, tokenizer, questions, 24)
    return [
        (row["question"], row["answer"], reply, base)
        for row, reply, base in zip(test, replies, plain, strict=True)
        if (smollm.parse_json_answer(reply) or "").strip().lower() != row["answer"].lower()
    ]
