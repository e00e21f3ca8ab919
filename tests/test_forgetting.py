"""minilora.lab.forgetting: recipes, L2-SP, trajectories, weight drift and frontiers."""

import math

import numpy as np
import pytest
import torch

from minilora.lab.forgetting import (
    Recipe,
    Task,
    at_level,
    finetune,
    forgetting_arm,
    frontier,
    measure,
    metrics_of,
    points,
    prepare,
    prose_to_code,
    reachable,
    trajectory,
    value_at,
    weight_drift,
    weight_norm,
)
from minilora.lab.race import ArmResult, race
from minilora.lora import LoRALinear, lora_layers
from minilora.nf4 import Linear4bit


@pytest.fixture
def base(tiny_char_gpt):
    return tiny_char_gpt


@pytest.fixture
def task(two_domain_task):
    return two_domain_task(steps=12)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


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
    assert len(wrapped) == 6 * base.config.n_layer
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


# --- task ----------------------------------------------------------------------------------------


def test_task_wants_evaluations_that_divide_the_steps():
    ids = torch.arange(500) % 10
    with pytest.raises(ValueError, match="eval_every"):
        Task(ids, ids, ids, steps=12, eval_every=5)
    with pytest.raises(ValueError, match="eval_every"):
        Task(ids, ids, ids, steps=0, eval_every=1)


# --- finetune ------------------------------------------------------------------------------------


def test_finetune_returns_a_trajectory_from_the_base(base, task):
    before = _state(base)
    run = finetune(base, Recipe("lora", 2), 1e-2, task, seed=0)
    assert run["step"] == [0, 4, 8, 12]
    start = measure(base, task)
    assert run["target_loss"][0] == pytest.approx(start["target_loss"])
    assert run["source_loss"][0] == pytest.approx(start["source_loss"])
    assert run["drift"][0] == 0.0 and all(d > 0 for d in run["drift"][1:])
    assert run["target_loss"][-1] < run["target_loss"][0]  # it learned the target
    assert run["trainable"] == 4 * 2 * (16 + 16) + 2 * 2 * (16 + 32)  # r·(in + out) per layer
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())
    # a given start is used as step 0 as is (full FT and LoRA both start at the base)
    again = finetune(base, Recipe("lora", 2), 1e-2, task, seed=0, start=start)
    assert again["target_loss"][0] == start["target_loss"]
    assert again["target_loss"][1:] == run["target_loss"][1:]


def test_finetune_is_deterministic_given_the_seed(base, task):
    a = finetune(base, Recipe("full"), 3e-3, task, seed=1)
    b = finetune(base, Recipe("full"), 3e-3, task, seed=1)
    assert a["target_loss"] == b["target_loss"] and a["source_loss"] == b["source_loss"]
    assert a["drift"] == b["drift"]


def test_lora_is_evaluated_as_what_it_computes(base, task):
    # finetune evaluates a merged copy of a LoRA model: the same losses as the unmerged model
    run = finetune(base, Recipe("lora", 4), 1e-2, task, seed=0, keep_model=True)
    now = measure(run["model"], task)
    # float32 sums in another order: ~1e-6 relative; a real mismatch would be ≫ 1e-4
    assert run["target_loss"][-1] == pytest.approx(now["target_loss"], rel=1e-4)
    assert run["source_loss"][-1] == pytest.approx(now["source_loss"], rel=1e-4)


def test_weight_drift_measures_w_minus_w0_over_the_block_layers(base, task):
    full = finetune(base, Recipe("full"), 1e-2, task, keep_model=True)
    expect = sum(
        (full["model"].get_submodule(n).weight - m.weight).pow(2).sum().item()
        for n, m in base.named_modules()
        if n.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")
    )
    assert full["drift"][-1] == pytest.approx(math.sqrt(expect), rel=1e-5)
    assert weight_drift(full["model"], base) == pytest.approx(full["drift"][-1])
    # LoRA: ΔW = s·B·A per layer; the head and embeddings are frozen anyway
    lora = finetune(base, Recipe("lora", 2), 1e-2, task, keep_model=True)
    layers = lora_layers(lora["model"])
    expect = sum((m.scaling * m.lora_B @ m.lora_A).pow(2).sum().item() for m in layers.values())
    assert lora["drift"][-1] == pytest.approx(math.sqrt(expect), rel=1e-5)
    assert weight_drift(base, base) == 0.0
    norm = math.sqrt(sum(m.base.weight.pow(2).sum().item() for m in layers.values()))
    assert weight_norm(base) == pytest.approx(norm, rel=1e-6)


def test_strong_l2sp_keeps_the_model_near_the_base(base, task):
    free = finetune(base, Recipe("full"), 1e-2, task)
    held = finetune(base, Recipe("full", l2sp=100.0), 1e-2, task)
    assert held["drift"][-1] < 0.3 * free["drift"][-1]


def test_finetune_rejects_a_bad_learning_rate(base, task):
    with pytest.raises(ValueError, match="lr"):
        finetune(base, Recipe("full"), 0.0, task)


# --- race arms and frontiers ---------------------------------------------------------------------


def test_metrics_of_and_trajectory_round_trip():
    run = {
        "step": [0, 5, 10],
        "target_loss": [2.0, 1.8, 1.7],
        "source_loss": [1.0, 1.1, 1.3],
        "drift": [0.0, 0.5, 0.9],
    }
    m = metrics_of(run, base_source=1.0)
    assert m["target_loss"] == 1.7 and m["forgetting"] == pytest.approx(0.3) and m["drift"] == 0.9
    t = trajectory(m)
    np.testing.assert_array_equal(t["step"], [0, 5, 10])
    np.testing.assert_allclose(t["forgetting"], [0.0, 0.1, 0.3])
    with pytest.raises(ValueError, match="trajectory"):
        trajectory({"target_loss": 1.0})


def test_forgetting_arm_runs_in_a_race(base, task):
    start = measure(base, task)
    arm = forgetting_arm(base, Recipe("lora", 2), task, [3e-3, 1e-2, 3e-2], start)
    result = race([arm], [0, 1], "target_loss", higher_is_better=False, widen=0, progress=False)
    runs = result["LoRA r=2"].runs[1e-2]
    assert len(runs) == 2 and runs[0] != runs[1]  # two seeds, different batches
    t = trajectory(runs[0])
    assert list(t["step"]) == [0, 4, 8, 12] and t["forgetting"][0] == 0.0


def _arm(trajectories):
    """An ArmResult from {lr: [(targets, forgettings), ...one per seed]} (steps 0, 5, 10...)."""
    arm = ArmResult("x", [0, 1], "target_loss", False)
    for lr, seeds in trajectories.items():
        arm.runs[lr] = []
        for target, forget in seeds:
            run = {"step": [5 * i for i in range(len(target))], "target_loss": target}
            run["source_loss"] = [1.0 + f for f in forget]
            run["drift"] = list(range(len(target)))
            arm.runs[lr].append(metrics_of(run, base_source=1.0))
    return arm


def test_value_at_interpolates_the_first_crossing():
    target, source = [2.0, 1.8, 1.6, 1.7, 1.4], [1.0, 1.2, 1.4, 1.3, 2.0]
    assert value_at(target, source, 2.5) == 1.0  # already there at the start
    assert value_at(target, source, 1.8) == pytest.approx(1.2)
    assert value_at(target, source, 1.7) == pytest.approx(1.3)  # halfway from 1.8 to 1.6
    assert value_at(target, source, 1.5) == pytest.approx(1.3 + (2 / 3) * 0.7)  # 1.7 → 1.4
    assert math.isnan(value_at(target, source, 1.0))


def test_at_level_takes_the_least_forgetting_over_rates_per_seed():
    arm = _arm(
        {
            1e-3: [([2.0, 1.9, 1.8], [0.0, 0.1, 0.2]), ([2.0, 1.95, 1.9], [0.0, 0.0, 0.1])],
            1e-2: [([2.0, 1.6, 1.5], [0.0, 0.6, 0.7]), ([2.0, 1.7, 1.6], [0.0, 0.3, 0.4])],
        }
    )
    # seed 0 reaches 1.8 at lr 1e-3 with 0.2, and at lr 1e-2 half-way to step 5 with 0.3: 0.2.
    # Seed 1 reaches it only at lr 1e-2, 2/3 of the way to step 5: 0.3 · 2/3.
    np.testing.assert_allclose(at_level(arm, 1.8), [0.2, 0.2])
    np.testing.assert_allclose(at_level(arm, 1.5), [0.7, np.nan])
    # drift (0, 1, 2 at steps 0, 5, 10): the least over rates, seed by seed
    np.testing.assert_allclose(at_level(arm, 1.8, "drift"), [0.5, 2 / 3])
    assert reachable(arm) == pytest.approx(1.6)  # seed 1 never got below 1.6


def test_points_and_frontier():
    arm = _arm(
        {
            1e-3: [([2.0, 1.9, 1.8], [0.0, 0.1, 0.2])] * 2,
            1e-2: [([2.0, 1.7, 1.5], [0.0, 0.4, 0.3])] * 2,
        }
    )
    pts = points(arm)
    assert len(pts["target"]) == 6 and list(pts["lr"]) == [1e-3] * 3 + [1e-2] * 3
    front = frontier(arm)
    # (1.7, 0.4) is beaten by (1.5, 0.3); the two starts tie, one is kept
    np.testing.assert_allclose(front["target"], [1.5, 1.8, 1.9, 2.0])
    np.testing.assert_allclose(front["forgetting"], [0.3, 0.2, 0.1, 0.0])
    one = points(arm, seed=1)
    np.testing.assert_allclose(one["target"], pts["target"])


def test_prose_to_code_loads_the_two_domains():
    task = prose_to_code(steps=5, eval_every=5)
    assert task.steps == 5 and len(task.target_train) > 100_000
    assert len(task.source_val) > 10_000 and len(task.target_val) > 10_000
