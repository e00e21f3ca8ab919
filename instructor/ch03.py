"""Worked solutions to the exercises of chapter 03 (counting what LoRA saves).

Each function answers one numbered exercise and returns the number(s) that answer it;
``tests/test_instructor_ch03.py`` checks them against hand arithmetic.
"""

from __future__ import annotations

import math

from minilora.budget import (
    LLAMA_7B,
    LLAMA_65B,
    bytes_per_param,
    count_lora_parameters,
    estimate_memory,
)

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def ex1_llama7b_all_linear(r: int = 16) -> tuple[int, float]:
    """(trainable numbers, adapter bytes in bf16) for LoRA on every linear layer of the blocks.

    Per layer: 4 attention projections of r·(4096 + 4096) and 3 MLP matrices of
    r·(11008 + 4096); 32 layers. At r = 16: 39,976,960 numbers, 79,953,920 B ≈ 80.0 MB.
    """
    trainable, _ = count_lora_parameters(LLAMA_7B, ALL_LINEAR, r)
    return trainable, trainable * bytes_per_param("bf16")


def ex2_ratio(d: int, k: int, r: int) -> float:
    """dk / (r·(d + k)); for d = k it is d/(2r). With dk = P fixed, r·(d + k) is smallest when
    d + k is, i.e. d = k = √P (AM ≥ GM): a square matrix saves the most."""
    return d * k / (r * (d + k))


def ex2_best_shape(P: int, r: int) -> tuple[int, int]:
    """The (d, k) with d·k = P (integer divisors) that maximises the saving: the most square one."""
    pairs = [(d, P // d) for d in range(1, math.isqrt(P) + 1) if P % d == 0]
    return max(pairs, key=lambda dk: ex2_ratio(dk[0], dk[1], r))


def ex3_own_module(r: int = 4) -> tuple[tuple[int, int], tuple[int, int]]:
    """describe → count_lora_parameters equals count_parameters after add_lora (regex target)."""
    import re

    import torch.nn as nn

    from minilora import add_lora, count_parameters
    from minilora.budget import describe

    model = nn.Sequential(
        nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 5)
    )
    targets = re.compile(r"^[02]$")  # the first two Linear layers
    predicted = count_lora_parameters(describe(model), targets, r)
    add_lora(model, targets, r=r)
    return predicted, count_parameters(model)


def ex4_qlora_variants(r: int = 64) -> dict[str, float]:
    """Bytes freed (positive) or added (negative) against QLoRA's NF4+DQ base with Adam, LLaMA 65B.

    Plain NF4 stores 4.5 instead of 4.127 bits per weight: it *costs* (4.5 − 4.127)/8 bytes per
    parameter, ≈ 3.0 GB. SGD without momentum drops Adam's two fp32 moments: frees 8 bytes per
    adapter number, 6.4 GB.
    """
    n_lora, _ = count_lora_parameters(LLAMA_65B, ALL_LINEAR, r)
    ref = estimate_memory("qlora", LLAMA_65B.total, n_lora).total
    nf4 = estimate_memory("qlora", LLAMA_65B.total, n_lora, weights="nf4").total
    sgd = estimate_memory("qlora", LLAMA_65B.total, n_lora, optimizer="sgd").total
    return {"nf4 instead of nf4+dq": ref - nf4, "sgd instead of adam": ref - sgd}


def ex5_rank_matching_model() -> float:
    """The rank r at which LoRA on all seven linear layers of LLaMA 7B trains as many numbers as
    the model has: total / (trainable at r = 1) ≈ 2,697. It lies between the break-even ranks of
    the attention projections (2,048) and of the MLP matrices (2,985): past 2,048 the q, k, v, o
    adapters are already bigger than their matrices."""
    per_rank, _ = count_lora_parameters(LLAMA_7B, ALL_LINEAR, 1)
    return LLAMA_7B.total / per_rank
