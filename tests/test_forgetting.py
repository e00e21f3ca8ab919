"""minilora.lab.forgetting: recipes, L2-SP, trajectories and matched-learning forgetting."""

import math

import numpy as np
import pytest
import torch

from minilora.lab.forgetting import (
    Recipe,
    Task,
    best_lr,
    finetune,
    forgetting_at,
    lr_sweep,
    mean_trajectory,
    measure,
    prepare,
    prose_to_code,
    source_loss_at,
    summarize,
)
from minilora.lab.models import CharGPT, GPTConfig
from minilora.lora import LoRALinear
from minilora.nf4 import Linear4bit

TINY = GPTConfig(block_size=16, n_layer=1, n_head=2, d_model=16, d_ff=32)


@pytest.fixture
def base():
    torch.manual_seed(0)
    return CharGPT(TINY).eval()


@pytest.fixture
def task():
    # Two "domains" with different statistics: source cycles through a-z, target through 0-9.
    source = torch.arange(3000) % 26 + 67
    target = torch.arange(3000) % 10 + 18
    return Task(target, target[:800], source[:800], steps=12, batch_size=4, eval_every=4)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _run(target, source, label="x", lr=1e-3):
    return {"label": label, "lr": lr, "target_loss": target, "source_loss": source}


# --- recipes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="adam"), "unknown kind"),
        (dict(kind="full", r=8), "no rank"),
        (dict(kind="lora"), "rank r"),
        (dict(kind="qlora", r=0), "rank r"),
        (dict(kind="lora", r=True), "rank r"),
        (dict(kind="full", l2sp="0.1"), "l2sp"),
        (dict(kind="full", l2sp=-1.0), "l2sp"),
        (dict(kind="full", l2sp=math.nan), "l2sp"),
        (dict(kind="lora", r=4, l2sp=0.1), "use it with 'full'"),
    ],
)
def test_recipe_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Recipe(**kwargs)


def test_recipe_labels():
    assert Recipe("full").label == "full"
    assert Recipe("full", l2sp=0.1).label == "full L2-SP λ=0.1"
    assert Recipe("lora", 8).label == "LoRA r=8"
    assert Recipe("qlora", 2).label == "QLoRA r=2"


# --- prepare -------------------------------------------------------------------------------------


def test_prepare_full_trains_everything_and_leaves_base_alone(base):
    before = _state(base)
    model = prepare(base, Recipe("full"))
    assert all(p.requires_grad for p in model.parameters())
    assert model is not base
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())


def test_prepare_lora_adapts_every_block_linear_and_freezes_the_rest(base):
    model = prepare(base, Recipe("lora", 4))
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 6 * TINY.n_layer
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(m.scaling == 2.0 for m in model.modules() if isinstance(m, LoRALinear))
    # B = 0: the fresh adapter computes exactly what the base computes
    idx = torch.randint(97, (2, 16))
    torch.testing.assert_close(model(idx), base(idx))


def test_prepare_qlora_quantizes_the_adapted_layers(base):
    model = prepare(base, Recipe("qlora", 4))
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(layers) == 6 and all(isinstance(m.base, Linear4bit) for m in layers)
    assert not any(isinstance(m, Linear4bit) for m in base.modules())


def test_prepare_seed_draws_the_same_adapter(base):
    a = prepare(base, Recipe("lora", 4), seed=3)
    b = prepare(base, Recipe("lora", 4), seed=3)
    c = prepare(base, Recipe("lora", 4), seed=4)
    name = "blocks.0.attn.q_proj.lora_A"
    assert torch.equal(a.get_parameter(name), b.get_parameter(name))
    assert not torch.equal(a.get_parameter(name), c.get_parameter(name))


# --- finetune ------------------------------------------------------------------------------------


def test_finetune_returns_a_trajectory_from_the_base(base, task):
    before = _state(base)
    run = finetune(base, Recipe("lora", 2), 1e-2, task, seed=0)
    assert run["step"] == [0, 4, 8, 12]
    start = measure(base, task)
    assert run["target_loss"][0] == pytest.approx(start["target_loss"])
    assert run["source_loss"][0] == pytest.approx(start["source_loss"])
    assert run["target_loss"][-1] < run["target_loss"][0]  # it learned the target
    assert run["trainable"] == 4 * 2 * (16 + 16) + 2 * 2 * (16 + 32)  # r·(in + out) per layer
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())


def test_finetune_is_deterministic_given_the_seed(base, task):
    a = finetune(base, Recipe("full"), 3e-3, task, seed=1)
    b = finetune(base, Recipe("full"), 3e-3, task, seed=1)
    assert a["target_loss"] == b["target_loss"] and a["source_loss"] == b["source_loss"]


def test_strong_l2sp_keeps_the_model_near_the_base(base, task):
    free = finetune(base, Recipe("full"), 1e-2, task, keep_model=True)
    held = finetune(base, Recipe("full", l2sp=100.0), 1e-2, task, keep_model=True)

    def distance(model):
        return sum(
            (p - q).detach().pow(2).sum().item()
            for p, q in zip(model.parameters(), base.parameters(), strict=True)
        )

    assert distance(held["model"]) < 0.1 * distance(free["model"])


def test_finetune_rejects_a_bad_learning_rate(base, task):
    with pytest.raises(ValueError, match="lr"):
        finetune(base, Recipe("full"), 0.0, task)


def test_lr_sweep_runs_each_recipe_at_each_rate_and_best_lr_picks_the_lowest_target(base, task):
    runs = lr_sweep(base, [Recipe("full")], {"full": [1e-5, 3e-3]}, task, progress=False)
    assert [(r["label"], r["lr"]) for r in runs] == [("full", 1e-5), ("full", 3e-3)]
    assert best_lr(runs, "full") == 3e-3  # 1e-5 barely moves in 12 steps
    with pytest.raises(ValueError, match="no learning rates"):
        lr_sweep(base, [Recipe("lora", 2)], {"full": [1e-3]}, task)
    with pytest.raises(ValueError, match="no runs"):
        best_lr(runs, "LoRA r=2")


# --- matched learning ----------------------------------------------------------------------------


def test_source_loss_at_interpolates_the_first_crossing():
    run = _run([2.0, 1.8, 1.6, 1.7, 1.4], [1.0, 1.2, 1.4, 1.3, 2.0])
    assert source_loss_at(run, 2.5) == 1.0  # already there at the start
    assert source_loss_at(run, 1.8) == pytest.approx(1.2)
    assert source_loss_at(run, 1.7) == pytest.approx(1.3)  # halfway from 1.8 to 1.6
    assert source_loss_at(run, 1.5) == pytest.approx(1.3 + (2 / 3) * 0.7)  # 1.7 → 1.4 crosses
    assert math.isnan(source_loss_at(run, 1.0))


def test_summarize_means_over_seeds():
    runs = [
        {**_run([2.0, 1.8], [1.0, 1.3]), "trainable": 5},
        {**_run([2.0, 1.6], [1.0, 1.1]), "trainable": 5},
    ]
    row = summarize(runs, base_source=1.0)["x"]
    assert row["n"] == 2 and row["trainable"] == 5 and row["lr"] == 1e-3
    assert row["target"] == pytest.approx(1.7)
    assert row["forgetting"] == pytest.approx(0.2)
    assert (row["forgetting_min"], row["forgetting_max"]) == pytest.approx((0.1, 0.3))


def test_forgetting_at_and_mean_trajectory_group_runs_by_label():
    runs = [
        {**_run([2.0, 1.6], [1.0, 1.4], "a"), "step": [0, 10]},
        {**_run([2.0, 1.6], [1.0, 1.2], "a"), "step": [0, 10]},
        {**_run([2.0, 1.9], [1.0, 1.1], "b"), "step": [0, 10]},
    ]
    at = forgetting_at(runs, 1.8, base_source=1.0)
    assert at["a"] == pytest.approx((0.15, 0.1, 0.2))  # halfway along each run
    assert math.isnan(at["b"][0])  # b never reached 1.8
    mean = mean_trajectory(runs)["a"]
    np.testing.assert_allclose(mean["source_loss"], [1.0, 1.3])
    with pytest.raises(ValueError, match="different steps"):
        mean_trajectory([*runs, {**runs[0], "step": [0, 5]}])


def test_prose_to_code_loads_the_two_domains():
    task = prose_to_code(steps=5)
    assert task.steps == 5 and len(task.target_train) > 100_000
    assert len(task.source_val) > 10_000 and len(task.target_val) > 10_000
