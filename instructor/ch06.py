"""Worked solutions for chapter 06 (LoRA on a 4-bit base) whose answer is a number.

Exercise 3: train QLoRA with a learning rate 100× smaller than the race's best (1e-4 instead of
1e-2), so that ΔW stays small, merge into the 4-bit base and read ``rel_fro_delta``. Measured
(seeds 0 and 1): ρ = ‖ΔW‖/‖W‖ falls from ≈ 1–2 to ≈ 0.15–0.23, the crossover of section 5's plot,
and the merge error grows from ≈ 0.10–0.14 of ‖ΔW‖ to ≈ 0.35–0.44 of it: a third or more of the
update is lost to the re-quantization (with ρ ≤ 10⁻² it would be all of it).
"""

from __future__ import annotations

import copy
import warnings

import torch

from minilora import add_lora, lora_layers, merge_lora, quantize_model
from minilora.lab.data import load_digits
from minilora.lab.pretrain import load_pretrained
from minilora.lab.train import train_classifier
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
