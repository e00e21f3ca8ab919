"""What fine-tuning makes a model forget: learning vs forgetting, measured (chapter 08).

The question of "LoRA Learns Less and Forgets Less" (Biderman et al. 2024) in miniature: adapt a
model pretrained on a *source* domain (English prose) to a *target* domain (Python code) and
measure both sides. Learning is the target validation loss going down; forgetting is the source
validation loss going up. Both in nats per character.

- ``Recipe``: one way to fine-tune: full fine-tuning (optionally with L2-SP: λ·‖θ − θ0‖² added
  to the loss, weight decay toward the pretrained weights θ0 instead of toward zero, using
  ``minilora.lab.train.l2_toward``), LoRA at rank r, or QLoRA (LoRA on a frozen NF4 base).
- ``prepare(base, recipe, seed)``: a fresh copy of the base, ready to train with that recipe.
- ``finetune(base, recipe, lr, seed, task)``: train and return the *trajectory*: the (target,
  source) losses at step 0 and every ``eval_every`` steps. A trajectory also answers "what if we
  had stopped earlier?", so "fewer steps" needs no extra run.
- ``lr_sweep``/``best_lr``: each recipe gets its own best learning rate (lowest final target
  loss), the only fair race between methods whose best rates differ several-fold.
- ``source_loss_at(run, level)``: the source loss at the moment the target loss first reached
  ``level`` (linear interpolation between evaluations): forgetting *at matched learning*.
- ``forgetting_at(runs, level, base_source)``: that, minus the base's source loss, per recipe
  (mean, min, max over seeds); ``summarize`` gives the same at the end of training.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from minilora.lab.data import load_text
from minilora.lab.train import l2_toward, lm_loss_on, train_lm
from minilora.lora import add_lora, count_parameters
from minilora.nf4 import quantize_model

# Every linear layer inside the transformer blocks of ``CharGPT``: QLoRA found that adapting all
# of them is needed to match full fine-tuning, and it makes the race about the rank constraint,
# not about which matrices may change.
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")
KINDS = ("full", "lora", "qlora")


@dataclass(frozen=True)
class Recipe:
    """One way to fine-tune: ``kind`` "full", "lora" or "qlora", LoRA rank ``r``, L2-SP ``l2sp``.

    LoRA uses alpha = 2·r (scaling 2 at every rank), so the learning rate sweep, not alpha,
    decides the step size. ``l2sp`` (λ) is only meaningful for full fine-tuning: LoRA's base
    cannot move, so a pull toward it would only shrink the adapter.
    """

    kind: str
    r: int | None = None
    l2sp: float = 0.0
    targets: tuple[str, ...] = ALL_LINEAR
    init: str = "gaussian"  # LoRA's A: "gaussian" N(0, 1/k) or PEFT's "kaiming"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; choose one of {KINDS}")
        if self.kind == "full" and self.r is not None:
            raise ValueError("full fine-tuning has no rank; leave r=None")
        bad_rank = isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1
        if self.kind != "full" and bad_rank:
            raise ValueError(f"{self.kind} needs an integer rank r >= 1, got {self.r!r}")
        number = isinstance(self.l2sp, (int, float)) and not isinstance(self.l2sp, bool)
        if not (number and math.isfinite(self.l2sp) and self.l2sp >= 0):
            raise ValueError(f"l2sp must be a number >= 0, got {self.l2sp!r}")
        if self.l2sp and self.kind != "full":
            raise ValueError("l2sp pulls trainable weights toward the base: use it with 'full'")

    @property
    def label(self) -> str:
        """A short name for tables and legends: 'full', 'full L2-SP λ=0.01', 'LoRA r=8'..."""
        if self.kind == "full":
            return f"full L2-SP λ={self.l2sp:g}" if self.l2sp else "full"
        return f"{'LoRA' if self.kind == 'lora' else 'QLoRA'} r={self.r}"


@dataclass(frozen=True)
class Task:
    """The data and the budget of one adaptation: same steps and batch size for every recipe."""

    target_train: torch.Tensor
    target_val: torch.Tensor
    source_val: torch.Tensor
    steps: int = 50
    batch_size: int = 8
    eval_every: int = 25
    eval_batches: int = 2  # × 32 windows of block_size characters, the same on every call


def prose_to_code(
    steps: int = 50, batch_size: int = 8, eval_every: int = 25, eval_batches: int = 2
) -> Task:
    """The chapter's task: adapt a prose model to Python code, watch the prose validation loss."""
    return Task(
        target_train=load_text("code", "train"),
        target_val=load_text("code", "val"),
        source_val=load_text("prose", "val"),
        steps=steps,
        batch_size=batch_size,
        eval_every=eval_every,
        eval_batches=eval_batches,
    )


def prepare(base: nn.Module, recipe: Recipe, seed: int = 0) -> nn.Module:
    """A copy of ``base`` set up for ``recipe`` (``base`` itself is never changed).

    full: every parameter trainable. lora: adapters on ``recipe.targets``, the rest frozen.
    qlora: those layers quantized to NF4 first, then adapters on them. ``seed`` draws LoRA's A.
    """
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    if recipe.kind == "full":
        return model.requires_grad_(True)
    if recipe.kind == "qlora":
        quantize_model(model, list(recipe.targets))
    return add_lora(model, list(recipe.targets), r=recipe.r, alpha=2 * recipe.r, init=recipe.init)


def measure(model: nn.Module, task: Task) -> dict[str, float]:
    """Target and source validation losses (nats/char) on the task's fixed windows."""
    return {
        "target_loss": lm_loss_on(model, task.target_val, task.eval_batches),
        "source_loss": lm_loss_on(model, task.source_val, task.eval_batches),
    }


def finetune(
    base: nn.Module,
    recipe: Recipe,
    lr: float,
    task: Task,
    seed: int = 0,
    progress: bool = False,
    keep_model: bool = False,
) -> dict:
    """Fine-tune a copy of ``base`` on the target domain; return the run as a dict.

    Keys: ``label``, ``kind``, ``r``, ``l2sp``, ``lr``, ``seed``, ``trainable`` (parameter count),
    and the trajectory ``step``, ``target_loss``, ``source_loss`` (lists, step 0 first: for QLoRA
    step 0 is the quantized base). ``model`` is added if ``keep_model``.
    """
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    model = prepare(base, recipe, seed)
    start = measure(model, task)
    # L2-SP: λ·‖θ − θ0‖² added to the loss, θ0 = the base (weight decay toward it, not zero)
    penalty = l2_toward(base, recipe.l2sp) if recipe.l2sp else None
    history = train_lm(
        model, task.target_train, task.steps, lr, batch_size=task.batch_size,
        val={"target": task.target_val, "source": task.source_val},
        eval_every=task.eval_every, eval_batches=task.eval_batches, penalty=penalty, seed=seed,
        progress=progress, desc=recipe.label,
    )  # fmt: skip
    run = {
        "label": recipe.label,
        "kind": recipe.kind,
        "r": recipe.r,
        "l2sp": recipe.l2sp,
        "lr": lr,
        "seed": seed,
        "trainable": count_parameters(model)[0],
        "step": [0, *history["eval_step"]],
        "target_loss": [start["target_loss"], *history["target_loss"]],
        "source_loss": [start["source_loss"], *history["source_loss"]],
    }
    if keep_model:
        run["model"] = model
    return run


def lr_sweep(
    base: nn.Module,
    recipes: Sequence[Recipe],
    lrs: dict[str, Sequence[float]],
    task: Task,
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Run every recipe at every learning rate of ``lrs[recipe.label]`` (one seed)."""
    missing = [r.label for r in recipes if r.label not in lrs]
    if missing:
        raise ValueError(f"no learning rates given for {missing}")
    jobs = [(recipe, lr) for recipe in recipes for lr in lrs[recipe.label]]
    return [
        finetune(base, recipe, lr, task, seed)
        for recipe, lr in tqdm(jobs, desc="lr sweep", disable=not progress)
    ]


def best_lr(runs: Sequence[dict], label: str) -> float:
    """The learning rate whose run of ``label`` ended with the lowest target loss."""
    mine = [run for run in runs if run["label"] == label]
    if not mine:
        raise ValueError(f"no runs labelled {label!r}")
    return min(mine, key=lambda run: run["target_loss"][-1])["lr"]


def source_loss_at(run: dict, level: float) -> float:
    """Source loss when the target loss first reached ``level`` (nan if it never did).

    Linear interpolation between the two evaluations around the crossing; a run that starts at
    or below ``level`` returns its starting source loss.
    """
    target, source = run["target_loss"], run["source_loss"]
    if target[0] <= level:
        return source[0]
    for i in range(1, len(target)):
        if target[i] <= level:
            t = (target[i - 1] - level) / (target[i - 1] - target[i])
            return source[i - 1] + t * (source[i] - source[i - 1])
    return math.nan


def _by_label(runs: Sequence[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["label"], []).append(run)
    return groups


def forgetting_at(
    runs: Sequence[dict], level: float, base_source: float
) -> dict[str, tuple[float, float, float]]:
    """Per label: (mean, min, max) over seeds of source_loss_at(run, level) − ``base_source``.

    Forgetting at *matched learning*: every run is stopped (by interpolation) when its target
    loss first reaches ``level``. A run that never reached it makes the result nan.
    """
    out = {}
    for label, group in _by_label(runs).items():
        values = np.array([source_loss_at(run, level) - base_source for run in group])
        out[label] = (float(values.mean()), float(values.min()), float(values.max()))
    return out


def mean_trajectory(runs: Sequence[dict]) -> dict[str, dict[str, np.ndarray]]:
    """Per label: the ``step``, ``target_loss`` and ``source_loss`` averaged over its seeds."""
    out = {}
    for label, group in _by_label(runs).items():
        if any(run["step"] != group[0]["step"] for run in group):
            raise ValueError(f"runs of {label!r} were evaluated at different steps")
        out[label] = {
            "step": np.array(group[0]["step"]),
            "target_loss": np.mean([run["target_loss"] for run in group], axis=0),
            "source_loss": np.mean([run["source_loss"] for run in group], axis=0),
        }
    return out


def summarize(runs: Sequence[dict], base_source: float) -> dict[str, dict[str, float]]:
    """Per label: mean/min/max over seeds of final target loss and forgetting (Δ source loss).

    Forgetting is measured from ``base_source``, the unquantized base's source loss, so QLoRA's
    number includes what the 4-bit rounding itself costs.
    """
    out = {}
    for label, group in _by_label(runs).items():
        target = np.array([run["target_loss"][-1] for run in group])
        forget = np.array([run["source_loss"][-1] - base_source for run in group])
        out[label] = {
            "n": len(group),
            "lr": group[0]["lr"],
            "trainable": group[0]["trainable"],
            "target": float(target.mean()),
            "target_min": float(target.min()),
            "target_max": float(target.max()),
            "forgetting": float(forget.mean()),
            "forgetting_min": float(forget.min()),
            "forgetting_max": float(forget.max()),
        }
    return out
