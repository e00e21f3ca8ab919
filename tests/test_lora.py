"""minilora.lora: the layer, add_lora/merge/disable, adapters on disk, and every refusal."""

from __future__ import annotations

import copy
import json
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import minilora
from minilora import adapters, lora
from minilora.lora import LoRALinear


class MLP(nn.Module):
    def __init__(self, d_in=6, d_hidden=10, d_out=4):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_hidden)
        self.head = nn.Linear(d_hidden, d_out)
        self.norm = nn.LayerNorm(d_hidden)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = self.norm(torch.relu(self.fc2(h)))
        return self.head(h)


def make_mlp(seed=0, **sizes):
    torch.manual_seed(seed)
    return MLP(**sizes)


def randomize_B(model, seed=1):
    """B = 0 makes every adapter a no-op; tests that need a real ΔW draw B at random."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in minilora.lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen))


def snapshot(model):
    """Everything add_lora/load_adapter could change: structure, values, requires_grad."""
    return (
        repr(model),
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
    )


def assert_unchanged(model, before):
    structure, values, grads = snapshot(model)
    assert structure == before[0]
    assert values.keys() == before[1].keys()
    assert all(torch.equal(values[k], before[1][k]) for k in values)
    assert grads == before[2]


X = torch.randn(5, 6, generator=torch.Generator().manual_seed(123))


# --- the layer ----------------------------------------------------------------------------------
@pytest.mark.parametrize("init", ["gaussian", "kaiming", "peft_gaussian"])
def test_fresh_layer_computes_the_base(init):
    base = nn.Linear(6, 4)
    layer = LoRALinear(copy.deepcopy(base), r=3, alpha=5, init=init)
    assert layer.lora_A.shape == (3, 6) and layer.lora_B.shape == (4, 3)
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0
    assert torch.equal(layer(X), base(X))
    assert layer.scaling == 5 / 3
    assert not any(p.requires_grad for p in layer.base.parameters())
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad


def test_rslora_scaling():
    assert LoRALinear(nn.Linear(6, 4), r=4, alpha=8, use_rslora=True).scaling == 8 / 2
    assert LoRALinear(nn.Linear(6, 4), r=4, alpha=8).scaling == 2


def test_init_statistics():
    """The default Gaussian is A ~ N(0, 1/k), k = in_features, whatever r (chapter 02's law)."""
    torch.manual_seed(0)
    for r in (1, 4, 16):
        gaussian = LoRALinear(nn.Linear(4096, 2), r=r, alpha=4).lora_A
        # σ = 1/√4096 = 1/64; the std of 4096·r samples is within 3% (> 5 standard errors)
        assert gaussian.std().item() == pytest.approx(1 / 64, rel=0.03)
        peft_law = LoRALinear(nn.Linear(4096, 2), r=r, alpha=4, init="peft_gaussian").lora_A
        assert peft_law.std().item() == pytest.approx(1 / r, rel=0.03)  # PEFT's "gaussian"
    kaiming = LoRALinear(nn.Linear(4096, 2), r=4, alpha=4, init="kaiming").lora_A
    bound = 1 / math.sqrt(4096)  # kaiming_uniform(a=√5) with fan_in = 4096
    assert kaiming.abs().max().item() <= bound
    assert kaiming.abs().max().item() > 0.99 * bound


def test_forward_is_base_plus_scaled_low_rank_path():
    layer = LoRALinear(nn.Linear(6, 4), r=2, alpha=3)
    with torch.no_grad():
        layer.lora_B.normal_()
    A, B, s = layer.lora_A, layer.lora_B, layer.scaling
    expected = X @ layer.base.weight.T + layer.base.bias + s * (X @ A.T) @ B.T
    torch.testing.assert_close(layer(X), expected, rtol=0, atol=1e-6)
    # The forward pass never forms the d×k matrix B·A: it does not even call delta_weight.
    layer.delta_weight = lambda: (_ for _ in ()).throw(AssertionError("formed B·A"))
    layer(X)


def test_dropout_only_on_the_lora_path():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 4), r=2, alpha=2, dropout=0.5).train()
    assert torch.equal(layer(X), layer.base(X))  # B = 0: nothing to drop yet
    with torch.no_grad():
        layer.lora_B.normal_()
    assert not torch.equal(layer(X), layer(X))  # dropout is random in train mode
    layer.eval()
    assert torch.equal(layer(X), layer(X))


def test_merge_unmerge_and_weight_property():
    layer = LoRALinear(nn.Linear(6, 4), r=2, alpha=3)
    with torch.no_grad():
        layer.lora_B.normal_()
    W0 = layer.base.weight.detach().clone()
    y = layer(X)
    torch.testing.assert_close(layer.weight, W0 + layer.delta_weight(), rtol=0, atol=0)
    assert layer.bias is layer.base.bias
    layer.merge()
    torch.testing.assert_close(layer.base.weight, W0 + layer.delta_weight(), rtol=0, atol=1e-7)
    torch.testing.assert_close(layer(X), y, rtol=0, atol=1e-6)
    assert torch.equal(layer.weight, layer.base.weight)  # ΔW is inside W0 now, not added twice
    with pytest.raises(ValueError, match="already merged"):
        layer.merge()
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, W0, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="not merged"):
        layer.unmerge()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"r": 0}, "r must be"),
        ({"r": 2.0}, "r must be"),
        ({"r": True}, "r must be"),
        ({"alpha": 0}, "alpha must be"),
        ({"alpha": -1}, "alpha must be"),
        ({"alpha": float("nan")}, "alpha must be"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"init": "zeros"}, "init must be"),
        ({"use_rslora": "yes"}, "use_rslora"),
    ],
)
def test_bad_hyperparameters_are_refused_and_leave_the_model_alone(kwargs, message):
    args = {"r": 2, "alpha": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        LoRALinear(nn.Linear(6, 4), **args)
    model = make_mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        minilora.add_lora(model, ["fc1", "fc2"], **args)
    assert_unchanged(model, before)


def test_layer_refuses_non_linear_and_double_wrapping():
    with pytest.raises(ValueError, match="wraps linear layers"):
        LoRALinear(nn.Conv1d(2, 2, 1), r=1, alpha=1)
    layer = LoRALinear(nn.Linear(6, 4), r=1, alpha=1)
    with pytest.raises(ValueError, match="already has LoRA"):
        LoRALinear(layer, r=1, alpha=1)


# --- add_lora -----------------------------------------------------------------------------------
def test_add_lora_wraps_targets_and_freezes_everything_else():
    model = make_mlp()
    y0 = model(X)
    out = minilora.add_lora(model, ["fc1", "head"], r=2, alpha=4)
    assert out is model
    assert sorted(minilora.lora_layers(model)) == ["fc1", "head"]
    assert isinstance(model.fc2, nn.Linear) and not isinstance(model.fc2, LoRALinear)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["fc1.lora_A", "fc1.lora_B", "head.lora_A", "head.lora_B"]
    assert torch.equal(model(X), y0)  # B = 0: the model computes what it did


@pytest.mark.parametrize(
    "targets, expected",
    [
        ("fc1", ["fc1"]),  # exact name
        (["fc1", "fc2"], ["fc1", "fc2"]),
        (re.compile(r"fc\d"), ["fc1", "fc2"]),  # compiled regex: full match
        ([re.compile(r"f.*"), "head"], ["fc1", "fc2", "head"]),
    ],
)
def test_target_matching(targets, expected):
    model = minilora.add_lora(make_mlp(), targets, r=1, alpha=1)
    assert sorted(minilora.lora_layers(model)) == expected


def test_suffix_matching_respects_dot_boundaries():
    outer = nn.Sequential()
    outer.add_module("block", make_mlp())
    outer.add_module("my_fc1", nn.Linear(4, 4))
    minilora.add_lora(outer, "fc1", r=1, alpha=1)
    assert sorted(minilora.lora_layers(outer)) == ["block.fc1"]  # not "my_fc1"
    minilora.add_lora(outer, "block.fc2", r=1, alpha=1)  # a dotted suffix works too
    assert "block.fc2" in minilora.lora_layers(outer)
    assert lora.name_matches("a.b.query", "query") and not lora.name_matches("a.bquery", "query")


def test_unknown_target_lists_the_linear_layers_and_changes_nothing():
    model = make_mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match="'q_proj' matches no module") as info:
        minilora.add_lora(model, ["fc1", "q_proj"], r=2, alpha=4)  # fc1 alone would be fine
    assert "fc1, fc2, head" in str(info.value)
    assert_unchanged(model, before)


def test_non_linear_target_is_refused():
    model = make_mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match="'norm', a LayerNorm, not a linear layer"):
        minilora.add_lora(model, "norm")
    with pytest.raises(ValueError, match=r"re.compile\('.*'\) matches 'norm'"):
        minilora.add_lora(model, re.compile(".*"))
    with pytest.raises(ValueError, match="target_modules must be"):
        minilora.add_lora(model, [])
    with pytest.raises(ValueError, match="target_modules must be"):
        minilora.add_lora(model, [3])
    assert_unchanged(model, before)


def test_duplicate_add_lora_is_refused():
    model = minilora.add_lora(make_mlp(), "fc1", r=2, alpha=4)
    before = snapshot(model)
    with pytest.raises(ValueError, match="'fc1' already has LoRA"):
        minilora.add_lora(model, ["fc2", "fc1"], r=2, alpha=4)
    assert_unchanged(model, before)
    # A second call on other layers works and keeps the first adapter trainable.
    minilora.add_lora(model, "fc2", r=2, alpha=4)
    assert model.fc1.lora_A.requires_grad and model.fc2.lora_A.requires_grad


def test_a_base_is_recognised_by_what_it_offers():
    """No registry: in/out features plus dequantize() (a packed base) or a 2-D float weight."""

    class NoMerge(nn.Module):  # a frozen, packed base that cannot take ΔW
        def __init__(self, weight):
            super().__init__()
            self.in_features, self.out_features = weight.shape[1], weight.shape[0]
            self.register_buffer("stored", weight.clone())

        def forward(self, x):
            return x @ self.stored.T

        def dequantize(self):
            return self.stored

    class Frozen(NoMerge):
        def merge_delta(self, delta):
            self.stored += delta

    class NoWeight(nn.Module):  # in/out features alone are not enough
        in_features, out_features = 6, 4

    weight = torch.randn(4, 6)
    with pytest.raises(ValueError, match="wraps linear layers"):
        LoRALinear(NoWeight(), r=2, alpha=2)
    with pytest.raises(ValueError, match="wraps linear layers"):
        LoRALinear(nn.Embedding(6, 4), r=2, alpha=2)  # a 2-D weight, but no in/out features
    layer = LoRALinear(Frozen(weight), r=2, alpha=2)
    # Its weight lives in a buffer, yet it holds 4 × 6 frozen weights: they count.
    assert minilora.count_parameters(layer) == (2 * (6 + 4), 2 * (6 + 4) + 4 * 6)
    with torch.no_grad():
        layer.lora_B.normal_()
    y = layer(X)
    torch.testing.assert_close(layer.weight, weight + layer.delta_weight())
    layer.merge()
    torch.testing.assert_close(layer(X), y, rtol=0, atol=1e-5)
    plain = LoRALinear(NoMerge(weight), r=2, alpha=2)
    with pytest.raises(ValueError, match="no merge_delta"):
        plain.merge()


# --- merge_lora, disable_lora, state dicts, counts ----------------------------------------------
def test_merge_lora_gives_plain_linears_with_the_same_outputs():
    model = minilora.add_lora(make_mlp(), ["fc1", "fc2", "head"], r=3, alpha=6)
    randomize_B(model)
    y = model(X)
    deltas = {n: m.delta_weight().detach() for n, m in minilora.lora_layers(model).items()}
    W0 = {n: m.base.weight.detach().clone() for n, m in minilora.lora_layers(model).items()}
    merged = minilora.merge_lora(model)
    assert merged is model and not minilora.lora_layers(model)
    for name in deltas:
        layer = model.get_submodule(name)
        assert type(layer) is nn.Linear
        torch.testing.assert_close(layer.weight, W0[name] + deltas[name], rtol=0, atol=1e-7)
    torch.testing.assert_close(model(X), y, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="no LoRA layers"):
        minilora.merge_lora(model)  # merging twice


def test_disable_lora_runs_the_base_and_restores():
    model = make_mlp()
    y0 = model(X)
    minilora.add_lora(model, ["fc1", "fc2"], r=2, alpha=4)
    randomize_B(model)
    y = model(X)
    assert not torch.allclose(y, y0)
    with minilora.disable_lora(model):
        assert torch.equal(model(X), y0)
        assert torch.equal(model.fc1.weight, model.fc1.base.weight)
    assert torch.equal(model(X), y)
    with pytest.raises(RuntimeError), minilora.disable_lora(model):
        raise RuntimeError("boom")
    assert torch.equal(model(X), y)  # restored after an exception too
    model.fc1.merge()
    with pytest.raises(ValueError, match="merged"), minilora.disable_lora(model):
        pass
    with pytest.raises(ValueError, match="no LoRA layers"), minilora.disable_lora(make_mlp()):
        pass


def test_lora_state_dict_holds_copies_of_A_and_B_only():
    model = minilora.add_lora(make_mlp(), ["fc1", "head"], r=2, alpha=4)
    sd = minilora.lora_state_dict(model)
    assert sorted(sd) == ["fc1.lora_A", "fc1.lora_B", "head.lora_A", "head.lora_B"]
    assert sd["fc1.lora_A"].shape == (2, 6) and sd["head.lora_B"].shape == (4, 2)
    sd["fc1.lora_A"].zero_()  # a snapshot: editing it leaves the model alone
    assert torch.count_nonzero(model.fc1.lora_A) > 0


def test_count_parameters_and_report():
    model = make_mlp()
    total = sum(p.numel() for p in model.parameters())
    assert minilora.count_parameters(model) == (total, total)
    minilora.add_lora(model, ["fc1", "fc2"], r=2, alpha=4)
    n_lora = 2 * (6 + 10) + 2 * (10 + 10)  # r·(in + out) per adapted layer
    assert minilora.count_parameters(model) == (n_lora, total + n_lora)
    report = minilora.trainable_report(model)
    pct = 100 * n_lora / (total + n_lora)
    assert report == (
        f"trainable params: {n_lora:,} || all params: {total + n_lora:,} || trainable%: {pct:.4f}"
    )
    tied = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    tied[1].weight = tied[0].weight  # a shared Parameter is counted once
    assert minilora.count_parameters(tied) == (9, 9)


def test_training_changes_only_the_adapters():
    model = minilora.add_lora(make_mlp(), ["fc1", "fc2"], r=2, alpha=4)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    adapters = minilora.lora_state_dict(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        loss = model(X).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    after = minilora.lora_state_dict(model)
    assert all(not torch.equal(after[k], adapters[k]) for k in adapters)


# --- nn.TransformerEncoderLayer: linear1, linear2 and the attention output projection -------------
@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_layer_all_three_targets(batch_first):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=batch_first)
    # Frozen weights alone can change which attention kernel PyTorch picks (a 2e-7 difference
    # with batch_first=True), so the reference is frozen too.
    reference = copy.deepcopy(layer).requires_grad_(False)
    xs = torch.randn(3, 5, 16)
    y0 = reference(xs)
    minilora.add_lora(layer, ["linear1", "linear2", "self_attn.out_proj"], r=2, alpha=4)
    assert sorted(minilora.lora_layers(layer)) == ["linear1", "linear2", "self_attn.out_proj"]
    assert torch.equal(layer(xs), y0)
    randomize_B(layer)
    # Reference: the same layer with W0 + ΔW written into its weights by hand.
    with torch.no_grad():
        for name, adapted in minilora.lora_layers(layer).items():
            reference.get_submodule(name).weight += adapted.delta_weight()
    for training in (True, False):  # eval + no_grad takes PyTorch's fused fast path
        layer.train(training), reference.train(training)
        with torch.set_grad_enabled(training):
            torch.testing.assert_close(layer(xs), reference(xs), rtol=0, atol=1e-5)
    # out_proj is read as .weight by F.multi_head_attention_forward: its adapter must matter...
    only_out_proj = copy.deepcopy(layer)
    with torch.no_grad():
        only_out_proj.linear1.lora_B.zero_(), only_out_proj.linear2.lora_B.zero_()
        assert not torch.allclose(only_out_proj(xs), y0, atol=1e-3)
    # ... and receive gradients.
    layer.train()
    layer(xs).sum().backward()
    assert layer.self_attn.out_proj.lora_B.grad.abs().sum() > 0
    assert layer.self_attn.out_proj.base.weight.grad is None


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_transformer_encoder_fast_path_with_padding_mask():
    """nn.TransformerEncoder in eval mode packs padded batches into nested tensors and calls a
    fused kernel that reads every weight directly: the adapters must still be applied."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    reference = copy.deepcopy(encoder).requires_grad_(False)
    minilora.add_lora(encoder, ["linear1", "linear2", "out_proj"], r=2, alpha=4)
    randomize_B(encoder)
    with torch.no_grad():
        for name, adapted in minilora.lora_layers(encoder).items():
            reference.get_submodule(name).weight += adapted.delta_weight()
        xs, mask = torch.randn(3, 5, 16), torch.zeros(3, 5, dtype=torch.bool)
        mask[0, 3:] = True  # padding: the nested-tensor fast path
        torch.testing.assert_close(
            encoder(xs, src_key_padding_mask=mask),
            reference(xs, src_key_padding_mask=mask),
            rtol=0,
            atol=1e-5,
        )


def test_multihead_attention_itself_is_refused_with_a_hint():
    layer = nn.TransformerEncoderLayer(16, 4, 32)
    with pytest.raises(ValueError, match="in_proj_weight.*self_attn.out_proj"):
        minilora.add_lora(layer, "self_attn")


# --- adapters on disk ---------------------------------------------------------------------------
@pytest.fixture
def trained(tmp_path):
    """An MLP with a random (non-zero) adapter on fc1 and fc2, saved to disk."""
    model = minilora.add_lora(make_mlp(), ["fc1", "fc2"], r=2, alpha=4, dropout=0.1)
    randomize_B(model)
    path = minilora.save_adapter(model, tmp_path / "adapter.safetensors")
    return model.eval(), path


def test_save_writes_only_adapters_with_their_config(trained):
    model, path = trained
    with safe_open(str(path), "pt") as f:
        keys, meta = sorted(f.keys()), f.metadata()
    assert keys == ["fc1.lora_A", "fc1.lora_B", "fc2.lora_A", "fc2.lora_B"]
    config = json.loads(meta["config"])
    assert config["r"] == 2 and config["alpha"] == 4 and config["scaling_rule"] == "alpha/r"
    assert config["targets"] == ["fc1", "fc2"] and config["dropout"] == 0.1
    assert config["minilora_version"] == minilora.__version__


def test_load_into_a_fresh_model_reproduces_outputs_and_is_trainable(trained):
    model, path = trained
    fresh = make_mlp().eval()  # the same seed: the same base weights
    minilora.load_adapter(fresh, path)
    torch.testing.assert_close(fresh(X), model(X), rtol=0, atol=0)
    assert fresh.fc1.lora_A.requires_grad and not fresh.fc1.base.weight.requires_grad
    fresh(X).sum().backward()  # the loaded adapter really trains: gradients reach A and B
    assert fresh.fc2.lora_A.grad.abs().sum() > 0 and fresh.fc2.lora_B.grad.abs().sum() > 0
    frozen = minilora.load_adapter(make_mlp(), path, trainable=False)
    assert minilora.count_parameters(frozen)[0] == 0


def test_load_switches_adapters_in_place(trained):
    model, path = trained
    other = minilora.add_lora(make_mlp(), ["fc1", "fc2"], r=2, alpha=4, dropout=0.1).eval()
    y_other = other(X)  # B = 0 here
    minilora.load_adapter(other, path)
    torch.testing.assert_close(other(X), model(X), rtol=0, atol=0)
    assert not torch.allclose(other(X), y_other)


def _expect_refusal(model, path, message):
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        minilora.load_adapter(model, path)
    assert_unchanged(model, before)


def test_load_refuses_another_r_alpha_layers_or_shapes(trained, tmp_path):
    _, path = trained
    _expect_refusal(minilora.add_lora(make_mlp(), ["fc1", "fc2"], r=4, alpha=4), path, "r, alpha")
    _expect_refusal(minilora.add_lora(make_mlp(), ["fc1", "fc2"], r=2, alpha=8), path, "r, alpha")
    _expect_refusal(minilora.add_lora(make_mlp(), ["fc1"], r=2, alpha=4), path, "adapts")
    _expect_refusal(make_mlp(d_hidden=12), path, "has shape")  # other sizes, no LoRA yet
    _expect_refusal(nn.Sequential(nn.Linear(6, 10)), path, "not a Linear layer of this model")
    merged = minilora.add_lora(make_mlp(), ["fc1", "fc2"], r=2, alpha=4)
    merged.fc1.merge()
    _expect_refusal(merged, path, "merged")


def _rewrite(path, tensors, metadata):
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_load_refuses_corrupt_truncated_or_foreign_files(trained, tmp_path):
    _, path = trained
    data = path.read_bytes()
    with safe_open(str(path), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    cases = {
        "truncated": data[: len(data) - 7],
        "half": data[: len(data) // 2],
        "garbage": bytes(range(256)) * 4,
        "empty": b"",
        "flipped": data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:],  # a byte inside B
    }
    for name, blob in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(blob)
        message = "checksum" if name == "flipped" else "not a readable safetensors"
        _expect_refusal(make_mlp(), bad, message)
    foreign = _rewrite(tmp_path / "foreign.safetensors", tensors, {})
    _expect_refusal(make_mlp(), foreign, "not a minilora adapter")
    broken = _rewrite(tmp_path / "broken.safetensors", tensors, {**meta, "config": "{"})
    _expect_refusal(make_mlp(), broken, "broken adapter config")
    bad_r = json.loads(meta["config"]) | {"r": 0}
    bad_r_file = _rewrite(
        tmp_path / "r0.safetensors", tensors, {**meta, "config": json.dumps(bad_r)}
    )
    _expect_refusal(make_mlp(), bad_r_file, "broken adapter config")
    missing = {k: v for k, v in tensors.items() if k != "fc2.lora_B"}
    meta_missing = {**meta, "sha256": adapters._checksum(missing)}  # a consistent, incomplete file
    missing_file = _rewrite(tmp_path / "missing.safetensors", missing, meta_missing)
    _expect_refusal(make_mlp(), missing_file, r"missing \['fc2.lora_B'\]")
    with pytest.raises(FileNotFoundError):
        minilora.load_adapter(make_mlp(), tmp_path / "nowhere.safetensors")


def test_save_refuses_models_without_or_with_mixed_adapters(tmp_path):
    with pytest.raises(ValueError, match="no LoRA layers"):
        minilora.save_adapter(make_mlp(), tmp_path / "a.safetensors")
    model = minilora.add_lora(make_mlp(), "fc1", r=2, alpha=4)
    minilora.add_lora(model, "fc2", r=4, alpha=4)
    with pytest.raises(ValueError, match="different r"):
        minilora.save_adapter(model, tmp_path / "a.safetensors")
    assert not (tmp_path / "a.safetensors").exists()


# --- property tests -----------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    d_in=st.integers(1, 12),
    d_out=st.integers(1, 12),
    r=st.integers(1, 6),
    alpha=st.floats(0.1, 64),
    rslora=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_merge_unmerge_round_trip(d_in, d_out, r, alpha, rslora, seed):
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(d_in, d_out), r=r, alpha=alpha, use_rslora=rslora)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, d_in)
    W0, y = layer.base.weight.detach().clone(), layer(x).detach()
    delta = layer.delta_weight().detach()
    assert delta.shape == (d_out, d_in) and y.shape == (3, d_out)
    assert torch.linalg.matrix_rank(delta) <= min(r, d_in, d_out)
    expected = alpha / math.sqrt(r) if rslora else alpha / r
    assert layer.scaling == pytest.approx(expected)
    scale = 1 + delta.abs().max().item()
    layer.merge()
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5 * scale)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, W0, rtol=0, atol=1e-6 * scale)
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5 * scale)
