"""Worked solutions to chapter 04's exercises (LoRA in PyTorch).

Kept apart from the notebook so students can try first; ``tests/test_instructor_ch04.py`` runs
them and checks the numbers the answers rest on. The chapter's set-up is rebuilt here: the
pretrained digits MLP, the first customer (digits turned 90° clockwise, the ``"rotated"`` task),
LoRA with α = 8, AdamW for 300 steps, 3 seeds, a learning-rate grid per arm (``race``).

1. ``ex1_rank(r)``: the adapter's size is r·(d_in + d_out) summed over fc1, fc2, head =
   r·(320 + 512 + 266) = 1,098·r numbers (chapter 03's formula), 4 bytes each plus a header
   under a kilobyte: r = 1 → 1,098, r = 4 → 4,392, r = 16 → 17,568. Accuracy on the first
   customer at each rank's best rate (mean over seeds 0-2, α = 8 fixed, so α/r changes with r and
   the race's grid absorbs it): measured r = 1 → 0.77, r = 4 → 0.93, r = 16 → 0.955 — rank 1 is
   far too thin for a 90° turn, rank 16 comes within about 2 points of full fine-tuning (0.977 in
   the chapter). At r = 16 the package warns about ``head`` (10 × 256): r > min(d, k) = 10, so
   its adapter (4,256 numbers) is bigger than the matrix it adapts (2,560).
2. ``ex2_head_only()``: a new last layer alone (LoRA r = 4 on ``head``, or even the whole head
   trained, 2,570 numbers) cannot read turned digits as well: measured 0.75 (LoRA on the head)
   and 0.83 (whole head) against 0.93 for LoRA on every layer (mean over seeds 0-2, each at its
   best rate). The head only re-weights the 256 features ``fc2`` computes, and those features were
   learnt on upright digits: a turned digit lights up other, mixed features, and a linear read-out
   can only go as far as they separate the classes. LoRA on every layer starts at the pixels
   (``fc1``) and can rebuild the features themselves.
3. ``ex3_load_errors()``: both refusals come before anything changes. An r = 8 server: the file's
   (r, alpha, use_rslora) = (4, 8.0, False) does not match the layers' (8, 8.0, False) — a config
   check on the file's metadata. A truncated file: safetensors cannot parse it (its header says
   how many bytes follow, and they are missing) — an integrity check before the config is read.
   In both cases the server's A and B are bit-identical afterwards.
4. ``ex4_scale()``: ΔW was trained for t = 1. Along the line W0 + t·ΔW the validation loss is a
   curve with its minimum near t = 1, not a straight line: t = 2 doubles every logit change, which
   overshoots (over-confident wrong answers cost more than right ones gain) and pushes hidden
   units past their ReLU kinks into patterns training never saw. Measured for the first customer
   (mean over seeds 0-2): accuracy 0.09 / 0.37 / 0.93 / 0.77 / 0.58 at t = 0 / 0.5 / 1 / 1.5 / 2,
   validation loss 32.3 / 2.64 / 0.23 / 1.51 / 6.66 nats: the best t is the trained one, and the
   loss rises steeply on both sides.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from minilora import add_lora, count_parameters, load_adapter, lora_layers, save_adapter
from minilora.lab.data import load_digits
from minilora.lab.pretrain import load_pretrained
from minilora.lab.race import arm_together, race
from minilora.lab.train import accuracy, train_classifiers_together

TARGETS = ["fc1", "fc2", "head"]
ALPHA, STEPS, SEEDS = 8, 300, (0, 1, 2)
LORA_LRS = (3e-3, 1e-2, 3e-2)  # the chapter's LoRA grid; race widens it if a best is on an edge


def _data():
    return load_digits("rotated", "train"), load_digits("rotated", "val")


def _lora_race(make, lrs=LORA_LRS, seeds=SEEDS):
    """Race one arm (``make(seed)`` builds a fresh model) on the first customer; return
    (the race's arm, {seed: model at the best rate})."""
    (X, y), (Xv, yv) = _data()
    models = {}

    def train_many(runs):
        nets = []
        for _, seed in runs:
            torch.manual_seed(seed)
            nets.append(make())
        lrs_, seeds_ = zip(*runs, strict=True)
        train_classifiers_together(nets, X, y, STEPS, lrs_, seeds_)
        models.update(zip(runs, nets, strict=True))
        return [{"val acc": accuracy(net, Xv, yv)} for net in nets]

    arm = race([arm_together("arm", train_many, lrs, seeds)], seeds, "val acc", progress=False)[
        "arm"
    ]
    return arm, {s: models[arm.best_lr, s] for s in seeds}


def ex1_rank(r: int, seeds: Sequence[int] = SEEDS) -> dict[str, float]:
    """Adapter size (numbers, bytes on disk) and the first customer's accuracy at rank ``r``."""
    base = load_pretrained("digits_mlp")
    arm, models = _lora_race(
        lambda: add_lora(copy.deepcopy(base), TARGETS, r=r, alpha=ALPHA), seeds=seeds
    )
    model = models[seeds[0]]
    with tempfile.TemporaryDirectory() as tmp:
        size = save_adapter(model, Path(tmp) / "a.safetensors").stat().st_size
    return {
        "trainable": count_parameters(model)[0],
        "formula": r * sum(d_in + d_out for d_in, d_out in ((64, 256), (256, 256), (256, 10))),
        "file_bytes": size,
        "acc_mean": arm.mean("val acc"),
        "best_lr": arm.best_lr,
        "at_edge": arm.at_edge,
    }


def ex2_head_only(seeds: Sequence[int] = SEEDS) -> dict[str, float]:
    """Mean accuracy on the first customer: LoRA on the head only, the whole head trained, and
    LoRA on every layer (the chapter's), each at its own best rate."""
    base = load_pretrained("digits_mlp")

    def whole_head():
        net = copy.deepcopy(base).requires_grad_(False)
        net.head.requires_grad_(True)
        return net

    makers = {
        "lora_head": (lambda: add_lora(copy.deepcopy(base), ["head"], r=4, alpha=ALPHA), LORA_LRS),
        "whole_head": (whole_head, (3e-3, 1e-2, 3e-2)),
        "lora_all": (lambda: add_lora(copy.deepcopy(base), TARGETS, r=4, alpha=ALPHA), LORA_LRS),
    }
    out = {}
    for name, (make, lrs) in makers.items():
        arm, _ = _lora_race(make, lrs, seeds)
        out[name] = arm.mean("val acc")
        out[f"{name}_at_edge"] = arm.at_edge
    return out


def ex3_load_errors() -> dict[str, str]:
    """The two errors of exercise 3, and whether the server's adapters survived them."""
    torch.manual_seed(0)
    base = load_pretrained("digits_mlp")
    trained = add_lora(copy.deepcopy(base), TARGETS, r=4, alpha=ALPHA)
    with torch.no_grad():
        for layer in lora_layers(trained).values():
            layer.lora_B.normal_()
    server = add_lora(copy.deepcopy(base), TARGETS, r=8, alpha=ALPHA)
    before = {k: v.clone() for k, v in server.state_dict().items()}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = save_adapter(trained, Path(tmp) / "a.safetensors")
        try:
            load_adapter(server, path)
        except ValueError as err:
            out["wrong_rank"] = str(err)
        path.write_bytes(path.read_bytes()[:-10])
        server4 = add_lora(copy.deepcopy(base), TARGETS, r=4, alpha=ALPHA)
        before4 = {k: v.clone() for k, v in server4.state_dict().items()}
        try:
            load_adapter(server4, path)
        except Exception as err:  # whatever the file reader raises on a truncated file
            out["truncated"] = f"{type(err).__name__}: {err}"
    same = [torch.equal(before[k], v) for k, v in server.state_dict().items()]
    same += [torch.equal(before4[k], v) for k, v in server4.state_dict().items()]
    out["unchanged"] = all(same)
    return out


@torch.no_grad()
def ex4_scale(ts: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0), seeds: Sequence[int] = SEEDS):
    """First customer's validation accuracy and loss along W0 + t·ΔW, mean over seeds (each seed's
    adapter trained at LoRA's best rate)."""
    base = load_pretrained("digits_mlp")
    _, models = _lora_race(
        lambda: add_lora(copy.deepcopy(base), TARGETS, r=4, alpha=ALPHA), seeds=seeds
    )
    _, (Xv, yv) = _data()
    acc = {t: 0.0 for t in ts}
    loss = {t: 0.0 for t in ts}
    for model in models.values():
        trained = {name: layer.scaling for name, layer in lora_layers(model).items()}
        for t in ts:
            for name, layer in lora_layers(model).items():
                layer.scaling = t * trained[name]
            acc[t] += accuracy(model, Xv, yv) / len(models)
            loss[t] += F.cross_entropy(model(Xv), yv).item() / len(models)
        for name, layer in lora_layers(model).items():
            layer.scaling = trained[name]
    return {"acc": acc, "loss": loss}
