"""Worked solutions for chapter 06 (LoRA on a 4-bit base), one function per numbered exercise.

Exercise 1 (``rank_gap``): LoRA vs QLoRA raced at r = 1 and 2 (α/r = 2, the chapter's grid, seeds
0-2, 400 steps). Measured: r = 1 gap +0.8 points (seeds −0.75..+2.0) while LoRA alone spans 4.5
points; r = 2 gap −1.3 (−6.0..+2.0) with seed noise 5.3 (LoRA) and 9.0 (QLoRA) points. Both ties:
with less rank the seed noise grows several-fold (r = 8: 1.5 points) and the gap stays inside it,
so no growth of the 4-bit penalty is visible at this size.

Exercise 2 (``blocksize_effect``, ``nf4_model_bytes``): the 4-bit digits MLP holds 49,704 bytes at
blocksize 16, 45,684 at 64 and 44,682 at 256 (codes 42,240 + one 8-bit absmax per block + fp32
scales per 256 absmax + fp32 biases 2,088; the bytes by hand equal ``model_nbytes``). The base's
upright accuracy is 98.75 % at every block size (loss 0.0697 / 0.0680 / 0.0656 nats against fp32's
0.0689); QLoRA's rotated accuracy at lr 1e-2 (mean of seeds 0-2) 93.7 / 95.4 / 93.6 %: differences
of the size of the seed noise, no trend. Smaller blocks cost bytes and buy nothing measurable here.

Exercise 3 (``small_update_merge``): train QLoRA with a learning rate 100× smaller than the race's
best (1e-4 instead of 1e-2), so that ΔW stays small, merge into the 4-bit base and read
``rel_fro_delta``. Measured (seeds 0 and 1): ρ = ‖ΔW‖/‖W‖ falls from ≈ 1–2 to ≈ 0.15–0.23, the
crossover of section 6's plot, and the merge error grows from ≈ 0.10–0.14 of ‖ΔW‖ to ≈ 0.35–0.44 of
it: a third or more of the update is lost to the re-quantization (with ρ ≤ 10⁻² it would be all).

Exercise 4 (``head_bytes``, ``head_race``): an fp32 head trained fully instead of a 4-bit head
with LoRA costs 8,912 more base bytes (54,596 vs 45,684), 442 more trainable numbers (9,226 vs
8,784) and 3,536 more bytes of Adam state; raced over the chapter's grid and seeds 0-2 it gains
−0.17 points (seeds −0.75..+0.5) against QLoRA's seed noise of 0.75: a tie, it buys nothing here.

Exercise 5 (``crossover_seq_len``): QLoRA on LLaMA 7B (r = 64 on all seven projections) holds
5.98 GiB that do not grow with tokens; at batch 1 without checkpointing its activations exceed
that from a sequence of 1,265 tokens (memory-efficient attention), or 922 with eager attention,
whose n_h·s softmax probabilities per token make the activations grow as s².
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from minilora import add_lora, lora_layers, merge_lora, model_nbytes, quantize_model
from minilora.budget import LLAMA_7B, bytes_per_param, count_lora_parameters
from minilora.lab.data import load_digits
from minilora.lab.memory import activation_bytes
from minilora.lab.pretrain import load_pretrained
from minilora.lab.race import Arm, race
from minilora.lab.train import accuracy, train_classifier
from minilora.nf4 import merge_errors

TARGETS = ["fc1", "fc2", "head"]


def small_update_merge(lr: float = 1e-4, steps: int = 400, seed: int = 0) -> dict[str, dict]:
    """Train chapter 06's QLoRA (r=8, α=16) at ``lr``; per layer, ρ = ‖ΔW‖/‖W‖ and the merge's
    ``rel_fro_delta`` (‖merge error‖ / ‖ΔW‖)."""
    torch.manual_seed(seed)
    base = load_pretrained("digits_mlp")
    X, y = load_digits("rotated", "train")
    model = add_lora(quantize_model(copy.deepcopy(base)), TARGETS, r=8, alpha=16)
    train_classifier(model, X, y, steps, lr, seed=seed, progress=False)
    rho = {
        name: (layer.delta_weight().norm() / layer.base.dequantize().norm()).item()
        for name, layer in lora_layers(model).items()
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the warning prints the same numbers we return
        merge_lora(model)
    errors = merge_errors(model)
    return {n: {"rho": rho[n], "rel_fro_delta": errors[n]["rel_fro_delta"]} for n in TARGETS}


# --- exercise 1: the paired gap at lower ranks --------------------------------------------------

LRS = (3e-3, 1e-2, 3e-2)


def _digits_trainer(arm: str, r: int, steps: int, quantize_head: bool = True):
    base = load_pretrained("digits_mlp")
    X, y = load_digits("rotated", "train")
    Xv, yv = load_digits("rotated", "val")

    def train(lr, seed):
        torch.manual_seed(seed)  # the same seed draws the same A in every arm
        model = copy.deepcopy(base)
        if arm != "lora":
            skip = [] if quantize_head else ["head"]
            model = quantize_model(model, skip_modules=skip)
        targets = TARGETS if quantize_head or arm == "lora" else ["fc1", "fc2"]
        model = add_lora(model, targets, r=r, alpha=2 * r)  # α/r = 2, as in the chapter
        if not quantize_head and arm != "lora":
            model.head.requires_grad_(True)  # the fp32 head trains fully, beside the adapters
        hist = train_classifier(model, X, y, steps, lr, seed=seed, val=(Xv, yv), progress=False)
        return {"val acc": hist["val_acc"][-1]}

    return train


def rank_gap(r: int, seeds=(0, 1, 2), steps: int = 400) -> dict[str, float]:
    """Exercise 1: LoRA vs QLoRA raced at rank ``r`` (α = 2r, the chapter's grid and seeds).

    Returns the paired gap (QLoRA − LoRA, mean and seed range), each arm's seed noise (range of
    its accuracy over seeds) and whether any best rate sits on the grid's edge.
    """
    arms = [Arm(a, _digits_trainer(a, r, steps), LRS) for a in ("lora", "qlora")]
    res = race(arms, seeds, "val acc")
    return {**_paired(res, "qlora", "lora"), "noise_lora": _noise(res, "lora"),
            "noise_qlora": _noise(res, "qlora")}  # fmt: skip


def _paired(res, a: str, b: str) -> dict:
    """a − b paired by seed (mean, seed range), the verdict, and any best rate on an edge."""
    gap = res.paired(a, b, "val acc")
    return {
        "gap": float(gap.mean),
        "gap_min": float(min(gap.values)),
        "gap_max": float(max(gap.values)),
        "at_edge": any(arm.at_edge for arm in res),
        "verdict": res.verdict(a, b, "val acc", tie=0.01),
    }


def _noise(res, arm: str) -> float:
    """The arm's seed noise: the range of its accuracy over seeds at its best rate."""
    return float(np.ptp(res[arm].values("val acc")))


# --- exercise 2: the block size -------------------------------------------------------------------


def nf4_model_bytes(blocksize: int) -> int:
    """Exercise 2, by hand: bytes of the digits MLP with its three layers in NF4 + double quant.

    Per layer: one 4-bit code per weight, one 8-bit absmax per block, one fp32 scale per 256
    absmax values and one fp32 absmax mean; the fp32 biases are kept.
    """
    total = 0
    for d_out, d_in in ((256, 64), (256, 256), (10, 256)):
        n = d_out * d_in
        blocks = -(-n // blocksize)
        total += n // 2 + blocks + 4 * -(-blocks // 256) + 4 + 4 * d_out
    return total


def blocksize_effect(blocksizes=(16, 64, 256), seeds=(0, 1, 2), lr: float = 1e-2) -> dict:
    """Exercise 2: per block size, the 4-bit model's bytes (measured), the base's upright accuracy
    and loss in NF4 (no training), and QLoRA's rotated accuracy (mean over ``seeds`` at ``lr``)."""
    base = load_pretrained("digits_mlp")
    Xu, yu = load_digits("upright", "val")
    X, y = load_digits("rotated", "train")
    Xv, yv = load_digits("rotated", "val")
    out = {}
    for bs in blocksizes:
        q = quantize_model(copy.deepcopy(base), blocksize=bs)
        with torch.no_grad():
            loss = F.cross_entropy(q(Xu), yu).item()
        accs = []
        for seed in seeds:
            torch.manual_seed(seed)
            model = add_lora(
                quantize_model(copy.deepcopy(base), blocksize=bs), TARGETS, r=8, alpha=16
            )
            hist = train_classifier(model, X, y, 400, lr, seed=seed, val=(Xv, yv), progress=False)
            accs.append(hist["val_acc"][-1])
        out[bs] = {
            "bytes": model_nbytes(q),
            "upright acc": accuracy(q, Xu, yu),
            "upright loss": loss,
            "qlora acc": float(np.mean(accs)),
        }
    return out


# --- exercise 4: a 4-bit body with a full-precision head that trains fully -----------------------


def head_bytes() -> dict[str, int]:
    """Exercise 4, the cost: bytes of the head and of what trains, NF4 + LoRA head vs fp32 head."""
    base = load_pretrained("digits_mlp")
    lora_head = add_lora(quantize_model(copy.deepcopy(base)), TARGETS, r=8, alpha=16)
    full_head = add_lora(
        quantize_model(copy.deepcopy(base), skip_modules=["head"]), ["fc1", "fc2"], r=8, alpha=16
    )
    full_head.head.requires_grad_(True)
    out = {}
    for name, m in (("nf4 head + LoRA", lora_head), ("fp32 head, trained", full_head)):
        trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        adapter = sum(p.nbytes for n, p in m.named_parameters() if "lora_" in n)
        out[name] = {
            "base bytes": model_nbytes(m) - adapter,
            "trainable": trainable,
            "adam bytes": 8 * trainable,
        }
    return out


def head_race(seeds=(0, 1, 2), steps: int = 400) -> dict[str, float]:
    """Exercise 4, what it buys: QLoRA with an fp32 head trained fully vs the chapter's QLoRA,
    each over the chapter's grid, paired by seed."""
    arms = [
        Arm("qlora", _digits_trainer("qlora", 8, steps), LRS),
        Arm("fp32 head", _digits_trainer("qlora", 8, steps, quantize_head=False), LRS),
    ]
    res = race(arms, seeds, "val acc")
    return {**_paired(res, "fp32 head", "qlora"), "noise": _noise(res, "qlora")}


# --- exercise 5: when activations outgrow QLoRA's weights -----------------------------------------

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def qlora_7b_fixed_bytes(r: int = 64) -> float:
    """Bytes of QLoRA on LLaMA 7B that do not grow with tokens: NF4+DQ block matrices, bf16 rest,
    fp32 adapters + gradients + Adam moments (16 bytes per adapter number), as section 4."""
    n_lora, _ = count_lora_parameters(LLAMA_7B, ALL_LINEAR, r)
    n_blocks = sum(m.params * hits // m.count for m, hits in LLAMA_7B.select(ALL_LINEAR))
    rest = LLAMA_7B.total - n_blocks
    return bytes_per_param("nf4+dq") * n_blocks + bytes_per_param("bf16") * rest + 16 * n_lora


def crossover_seq_len(attention: str = "sdpa", r: int = 64) -> int:
    """Exercise 5: the smallest sequence length (batch 1, no checkpointing) at which QLoRA's
    activations on LLaMA 7B exceed its fixed bytes."""
    fixed = qlora_7b_fixed_bytes(r)

    def act(s: int) -> int:
        return sum(
            activation_bytes(
                4096, 11008, 32, 32, 32000, 1, s, lora_r=r, attention=attention
            ).values()
        )

    lo, hi = 1, 1 << 20  # act grows with s: bisect for the first s with act(s) > fixed
    while lo < hi:
        mid = (lo + hi) // 2
        if act(mid) > fixed:
            hi = mid
        else:
            lo = mid + 1
    return lo
