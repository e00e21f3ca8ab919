"""Worked solutions for chapter 10 (the same thing in PEFT).

Exercise 1 (dropout in both libraries). Both put the dropout on the adapter's input x, before A
(PEFT's ``lora_dropout``, minilora's ``dropout``), and both draw one Bernoulli mask per adapted
layer, in the order the forward pass reaches the layers, from torch's global generator. So in
training mode the outputs are equal *if and only if* the generator starts from the same state:
seeded alike they are bit-identical (measured: largest difference 0), while two forward passes of
the same model under different seeds differ by ~1.4 in the logits. In eval mode dropout is the
identity and the outputs are equal whatever the generator did.

Exercise 2 (scaling and PEFT's default count). ``scaling`` is ``instructor.solutions.scaling``.
``LoraConfig(target_modules=["fc1", "fc2", "head"])`` uses PEFT's default r = 8:
8·(64 + 256) + 8·(256 + 256) + 8·(256 + 10) = 8,784 trainable numbers, which is what
``get_nb_trainable_parameters`` reports (and ``check_param_count(base, 8, 8784)`` accepts).

Exercise 3 (one learning rate for every arm). With every arm at lr = 1e-2 and no widening,
rsLoRA "wins" at every rank from r = 8 up, by 0.4–0.5 nats at r = 128 (seeds 0–2: α/r 0.72,
α/√r 0.30; seeds 3–5: 0.83 vs 0.28), and α/r even looks *worse* at r = 128 than at r = 8. The
comparison is unfair because one rate cannot be right for both rules: 1e-2 is near α/√r's best
rate but the bottom of α/r's grid, below α/r's best at high rank (the chapter's grid table), so
it measures which rule was handed the better rate, not which rule is better. In the chapter's
race (best against best) the rules tie at r = 2 and 8. Grid table: α/√r's best rate moves from
1e-2 (r = 2) to 3e-3 (r = 128), a factor ≈ 3.3, one grid step (resolution ×3). Under Adam, B's
entries move ≈ lr per step, and ΔW = s·B·A sums r such rank-one moves: if they added up coherently
the step in ΔW would grow as s·r = α·√r and the best rate would fall √(128/2) = 8×; if they added
up like random signs, as s·√r = α, and the best rate would not move at all. The measured ×3.3
lies between.

Exercise 4 (merge into a float32 copy of the dequantized base). Merging ΔW into fp32 weights that
hold exactly the dequantized 4-bit values changes the logits only by float32 rounding (measured
2.4e-7 relative), against ≈ 3 % for the merge back into 4 bits (re-quantizing Ŵ + ΔW, chapter 06).
"""

from __future__ import annotations

import copy
import warnings

import peft
import torch

from minilora import add_lora, lora_layers, merge_lora, quantize_model
from minilora.lab.data import load_digits
from minilora.lab.pretrain import load_pretrained
from minilora.lab.race import Arm, race
from minilora.lab.train import train_classifier

TARGETS = ["fc1", "fc2", "head"]


def _peft_layer(model, name):
    return model.base_model.model.get_submodule(name)


def _same_adapter(dropout: float, seed: int = 0):
    """Chapter 10's pair (minilora, PEFT) with the same A and a non-zero B, and dropout."""
    base = load_pretrained("digits_mlp")
    torch.manual_seed(seed)
    ours = add_lora(copy.deepcopy(base), TARGETS, r=4, alpha=8, dropout=dropout)
    theirs = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=dropout),
    )
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            layer.lora_B.normal_(0, 0.05)  # B = 0 would hide every difference behind a zero update
            _peft_layer(theirs, name).lora_A["default"].weight.copy_(layer.lora_A)
            _peft_layer(theirs, name).lora_B["default"].weight.copy_(layer.lora_B)
    return ours, theirs


def ex1_dropout(dropout: float = 0.1) -> dict[str, float]:
    """Largest logit differences: training mode with the same / different generator state, eval."""
    ours, theirs = _same_adapter(dropout)
    X, _ = load_digits("rotated", "val")
    ours.train(), theirs.train()
    with torch.no_grad():
        torch.manual_seed(1)
        a = ours(X)
        torch.manual_seed(1)
        b = theirs(X)
        torch.manual_seed(2)
        c = ours(X)
        ours.eval(), theirs.eval()
        d, e = ours(X), theirs(X)
    return {
        "train_same_seed": (a - b).abs().max().item(),
        "train_other_seed": (a - c).abs().max().item(),
        "eval": (d - e).abs().max().item(),
    }


def ex2_peft_default_count() -> tuple[int, int]:
    """(our count by hand, PEFT's count) for LoraConfig(target_modules=TARGETS), default r = 8."""
    base = load_pretrained("digits_mlp")
    by_hand = sum(
        8 * (base.get_submodule(n).in_features + base.get_submodule(n).out_features)
        for n in TARGETS
    )
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(target_modules=TARGETS))
    return by_hand, theirs.get_nb_trainable_parameters()[0]


def _rs_trainer(r: int, use_rslora: bool, steps: int = 100):
    base = load_pretrained("digits_mlp")
    X, y = load_digits("rotated", "train")
    Xv, yv = load_digits("rotated", "val")

    def train(lr, seed):
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # r > min(d, k) for the 10-wide head
            model = add_lora(
                copy.deepcopy(base), TARGETS, r=r, alpha=8, init="kaiming", use_rslora=use_rslora
            )
        hist = train_classifier(model, X, y, steps, lr, seed=seed, val=(Xv, yv), progress=False)
        return {"val loss": hist["val_loss"][-1]}

    return train


def ex3_one_rate(seeds=(0, 1, 2), ranks=(2, 8, 128), lr: float = 1e-2) -> dict[str, float]:
    """Mean validation loss of every (rule, rank) at one shared learning rate."""
    arms = [
        Arm(f"{rule} r={r}", _rs_trainer(r, rule == "α/√r"), (lr,))
        for r in ranks
        for rule in ("α/r", "α/√r")
    ]
    result = race(arms, seeds, "val loss", higher_is_better=False, widen=0, progress=False)
    return {arm.name: arm.mean("val loss") for arm in result}


def ex3_best_rate_shift(seeds=(0, 1, 2)) -> float:
    """α/√r's best learning rate at r = 2 divided by its best at r = 128 (the chapter's grids)."""
    arms = [
        Arm("r=2", _rs_trainer(2, True), (3e-3, 1e-2, 3e-2)),
        Arm("r=128", _rs_trainer(128, True), (1e-3, 3e-3, 1e-2)),
    ]
    result = race(arms, seeds, "val loss", higher_is_better=False, progress=False)
    return result["r=2"].best_lr / result["r=128"].best_lr


def ex4_merge_into_float(seed: int = 0) -> dict[str, float]:
    """Relative logit change of merging chapter 10's QLoRA adapter into fp32 vs into 4 bits."""
    base = load_pretrained("digits_mlp")
    X, _ = load_digits("rotated", "val")
    torch.manual_seed(seed)
    qlora = add_lora(quantize_model(copy.deepcopy(base), double_quant=False), TARGETS, r=4, alpha=8)
    dequantized = copy.deepcopy(base)
    with torch.no_grad():
        for name, layer in lora_layers(qlora).items():
            layer.lora_B.normal_(0, 0.05)
            weight = dequantized.get_submodule(name).weight
            weight.copy_(layer.base.dequantize())
            weight.add_(layer.delta_weight())  # the merge, in float32
        reference = qlora(X)
        in_float = dequantized(X)
        in_4bit = copy.deepcopy(qlora)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # merge_lora reports its error; we measure it below
            merge_lora(in_4bit)
        merged_4bit = in_4bit(X)
    scale = reference.abs().max()
    return {
        "float": ((reference - in_float).abs().max() / scale).item(),
        "4bit": ((reference - merged_4bit).abs().max() / scale).item(),
    }
