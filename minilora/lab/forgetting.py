"""What fine-tuning makes a model forget: learning vs forgetting, measured (chapter 08).

The question of "LoRA Learns Less and Forgets Less" (Biderman et al. 2024) in miniature: adapt a
model pretrained on a *source* domain (English prose) to a *target* domain (Python code) and
measure both sides. Learning is the target validation loss going down; forgetting is the source
validation loss going up from the base's. Both in nats per character.

A single "best learning rate" per method is the wrong summary here: a larger rate learns a little
more and forgets much more, so the winner flips with the seed. Each method is described instead by
its **learning-vs-forgetting frontier**: every (learning rate, step, seed) it was run at gives a
point (target loss, forgetting); the frontier is the least forgetting with which the method reaches
a given target loss. Two methods are compared at *matched learning*, frontier against frontier.

- ``Recipe``: one way to fine-tune: full fine-tuning (optionally with L2-SP, a pull toward the
  pretrained weights), LoRA at rank r, or QLoRA (LoRA on a frozen NF4 base). ``Task``: the data
  and the budget (steps, batch, how often and on how many windows to evaluate).
- ``prepare(base, recipe, seed)``: a fresh copy of the base, ready to train with that recipe.
- ``finetune(base, recipe, lr, task, seed)``: train and return the *trajectory*: target loss,
  source loss and weight drift ``‖W − W0‖`` at step 0 and every ``task.eval_every`` steps.
- ``forgetting_arm(...)``: a recipe as an ``Arm`` of ``minilora.lab.race.race`` (its learning-rate
  grid, every seed), whose metrics carry the whole trajectory (``"target@10"``, ...).
- ``trajectory``, ``frontier`` (``minilora.lab.race.pareto_front`` over every point of an arm),
  ``at_level`` (per seed, the least forgetting or drift over the arm's rates and steps on reaching a
  target loss): the frontier comparison.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from minilora.lab.data import load_text, sample_lm_batch
from minilora.lab.race import Arm, ArmResult, pareto_front
from minilora.lab.train import l2_toward, lm_loss, lm_loss_on, train
from minilora.lora import LoRALinear, add_lora, count_parameters, merge_lora
from minilora.nf4 import quantize_model

# Every linear layer inside the transformer blocks of ``CharGPT``: QLoRA found that adapting all
# of them is needed to match full fine-tuning, and it makes the race about the rank constraint,
# not about which matrices may change.
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")
KINDS = ("full", "lora", "qlora")
SERIES = ("target", "forgetting", "drift")  # the per-step metrics of a trajectory


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
    steps: int = 40
    batch_size: int = 8
    eval_every: int = 5
    eval_batches: int = 8  # × 32 windows of block_size characters, the same on every call

    def __post_init__(self):
        if self.steps < 1 or self.eval_every < 1 or self.steps % self.eval_every:
            raise ValueError(
                f"eval_every={self.eval_every} must divide steps={self.steps} (both >= 1), "
                "so every run is measured at the same steps"
            )


def prose_to_code(
    steps: int = 40, batch_size: int = 8, eval_every: int = 5, eval_batches: int = 8
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


@torch.no_grad()
def weight_drift(model: nn.Module, base: nn.Module, targets: Sequence[str] = ALL_LINEAR):
    """``‖W − W0‖_F`` over the block layers named in ``targets`` (all of them, as one vector).

    W is what the layer computes with now: the trained weight after full fine-tuning, W0 + ΔW
    (ΔW = s·B·A) with LoRA. For QLoRA only ΔW counts (its W0 is the rounded base). The same
    layers for every method, so the numbers compare; full fine-tuning also moves the embeddings,
    the layer norms and the head, which this leaves out.
    """
    total = 0.0
    for name, layer in base.named_modules():
        if name.rsplit(".", 1)[-1] not in targets:
            continue
        tuned = model.get_submodule(name)
        if isinstance(tuned, LoRALinear):
            delta = tuned.delta_weight()
        else:
            delta = tuned.weight - layer.weight
        total += float(delta.double().pow(2).sum())
    return math.sqrt(total)


@torch.no_grad()
def weight_norm(base: nn.Module, targets: Sequence[str] = ALL_LINEAR) -> float:
    """``‖W0‖_F`` over the same layers as ``weight_drift``: the scale to measure a drift by."""
    return math.sqrt(
        sum(
            float(m.weight.double().pow(2).sum())
            for name, m in base.named_modules()
            if name.rsplit(".", 1)[-1] in targets
        )
    )


def finetune(
    base: nn.Module,
    recipe: Recipe,
    lr: float,
    task: Task,
    seed: int = 0,
    start: dict[str, float] | None = None,
    progress: bool = False,
    keep_model: bool = False,
) -> dict:
    """Fine-tune a copy of ``base`` on the target domain; return the run as a dict.

    Keys: ``label``, ``kind``, ``r``, ``l2sp``, ``lr``, ``seed``, ``trainable`` (parameter count),
    and the trajectory ``step``, ``target_loss``, ``source_loss``, ``drift`` (lists, step 0 first;
    for QLoRA step 0 is the quantized base). ``start`` (``measure`` of the untrained model) skips
    measuring step 0 again: full fine-tuning and LoRA (B = 0) both start exactly at the base.
    ``model`` is added if ``keep_model``.
    """
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    model = prepare(base, recipe, seed)
    start = measure(model, task) if start is None else start
    # L2-SP: λ·‖θ − θ0‖² added to the loss, θ0 = the base (weight decay toward it, not zero)
    penalty = l2_toward(base, recipe.l2sp) if recipe.l2sp else None
    block = model.config.block_size

    def evaluate(m):
        drift = weight_drift(m, base, recipe.targets)
        if recipe.kind == "lora":  # a merged copy computes the same, at full fine-tuning's cost
            m = merge_lora(copy.deepcopy(m))
        return {**measure(m, task), "drift": drift}

    history = train(
        model, lm_loss, lambda gen: sample_lm_batch(task.target_train, task.batch_size, block, gen),
        task.steps, lr, penalty=penalty, eval_fn=evaluate, eval_every=task.eval_every, seed=seed,
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
        "drift": [0.0, *history["drift"]],
    }
    if keep_model:
        run["model"] = model
    return run


def metrics_of(run: dict, base_source: float) -> dict[str, float]:
    """A run as flat metrics for ``race``: finals and every evaluation (``"forgetting@10"``...).

    ``target_loss``, ``forgetting`` (source loss − ``base_source``) and ``drift`` at the end, and
    ``target@s``, ``forgetting@s``, ``drift@s`` at every evaluated step s.
    """
    out = {
        "target_loss": run["target_loss"][-1],
        "forgetting": run["source_loss"][-1] - base_source,
        "drift": run["drift"][-1],
    }
    for i, step in enumerate(run["step"]):
        out[f"target@{step}"] = run["target_loss"][i]
        out[f"forgetting@{step}"] = run["source_loss"][i] - base_source
        out[f"drift@{step}"] = run["drift"][i]
    return out


def forgetting_arm(
    base: nn.Module,
    recipe: Recipe,
    task: Task,
    lrs: Sequence[float],
    base_metrics: dict[str, float] | None = None,
) -> Arm:
    """``recipe`` as a race arm: ``train(lr, seed)`` fine-tunes and returns ``metrics_of`` it.

    Forgetting is measured from the unquantized base's source loss (``base_metrics``, measured
    here if not given), so QLoRA's number includes what the 4-bit rounding itself costs.
    """
    base_metrics = measure(base, task) if base_metrics is None else base_metrics
    start = None if recipe.kind == "qlora" else base_metrics  # B = 0: LoRA starts at the base

    def run(lr: float, seed: int) -> dict[str, float]:
        result = finetune(base, recipe, lr, task, seed, start=start)
        return metrics_of(result, base_metrics["source_loss"])

    return Arm(recipe.label, run, lrs)


def trajectory(metrics: dict[str, float]) -> dict[str, np.ndarray]:
    """The per-step series of one run's ``metrics_of``: ``step``, ``target``, ``forgetting``,
    ``drift`` as arrays, in step order."""
    steps = sorted(int(key.split("@")[1]) for key in metrics if key.startswith("target@"))
    if not steps:
        raise ValueError("these metrics hold no trajectory (no 'target@<step>' keys)")
    out = {"step": np.array(steps)}
    for name in SERIES:
        out[name] = np.array([metrics[f"{name}@{s}"] for s in steps])
    return out


def points(arm: ArmResult, seed: int | None = None) -> dict[str, np.ndarray]:
    """Every (rate, step) point an arm visited: arrays ``lr``, ``step``, ``target``,
    ``forgetting``, ``drift``; the mean over seeds, or one seed's values if ``seed`` is given."""
    rows = {key: [] for key in ("lr", "step", *SERIES)}
    for lr in arm.lrs:
        runs = arm.runs[lr] if seed is None else [arm.runs[lr][arm.seeds.index(seed)]]
        trajs = [trajectory(run) for run in runs]
        rows["lr"] += [lr] * len(trajs[0]["step"])
        rows["step"] += list(trajs[0]["step"])
        for name in SERIES:
            rows[name] += list(np.mean([t[name] for t in trajs], axis=0))
    return {key: np.array(value) for key, value in rows.items()}


def frontier(arm: ArmResult, seed: int | None = None) -> dict[str, np.ndarray]:
    """The arm's learning-vs-forgetting frontier: the points of ``points`` that no other point
    beats on both target loss and forgetting (``pareto_front``), sorted by target loss."""
    pts = points(arm, seed)
    keep = pareto_front(pts["target"], pts["forgetting"])
    return {key: value[keep] for key, value in pts.items()}


def value_at(target: Sequence[float], values: Sequence[float], level: float) -> float:
    """``values`` when ``target`` first reaches ``level`` (nan if it never does).

    Linear interpolation between the two evaluations around the crossing (stopping between two
    evaluations is a run one could have made); a run that starts at or below ``level`` returns
    its first value.
    """
    if target[0] <= level:
        return float(values[0])
    for i in range(1, len(target)):
        if target[i] <= level:
            t = (target[i - 1] - level) / (target[i - 1] - target[i])
            return float(values[i - 1] + t * (values[i] - values[i - 1]))
    return math.nan


def at_level(arm: ArmResult, level: float, metric: str = "forgetting") -> np.ndarray:
    """Per seed (in ``arm.seeds`` order): the least ``metric`` over the arm's learning rates with
    which that seed's run first reaches target loss ``level``: the frontier at matched learning.

    nan for a seed none of whose runs reaches ``level``. A rate at which the seed diverged is
    skipped.
    """
    out = []
    for i in range(len(arm.seeds)):
        best = math.nan
        for lr in arm.lrs:
            traj = trajectory(arm.runs[lr][i])
            if not np.all(np.isfinite(traj["target"])):
                continue
            v = value_at(traj["target"], traj[metric], level)
            if not math.isnan(v) and not (v >= best):  # `not >=` so a nan best is replaced
                best = v
        out.append(best)
    return np.array(out)


def reachable(arm: ArmResult) -> float:
    """The lowest target loss every seed of the arm reached (at some rate and step): levels
    above it are comparable on every seed."""
    lows = [
        min(np.nanmin(trajectory(arm.runs[lr][i])["target"]) for lr in arm.lrs)
        for i in range(len(arm.seeds))
    ]
    return float(max(lows))
