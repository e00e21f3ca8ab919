"""The model-level verbs a PEFT user expects, and the refusals that keep them from lying.

all-linear / exclude_modules, unmerge / unload, disabling a merged model, the base state dict,
the merged flag in a state dict, NaN never merged, NumPy scalars, r > min(d, k), a second
add_lora leaving an unfrozen head alone, a lone string as a regex and short error lists.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import minilora
from minilora import LoRALinear, add_lora, base_state_dict, merge_lora, unload_lora, unmerge_lora


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"q_proj": nn.Linear(8, 8), "v_proj": nn.Linear(8, 8)}) for _ in range(3)
        )
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        for block in self.blocks:
            x = torch.tanh(block["q_proj"](x) + block["v_proj"](x))
        return self.head(self.norm(x))


def net(seed=0):
    torch.manual_seed(seed)
    return Net()


X = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))


def randomize_B(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in minilora.lora_layers(model).values():
            layer.lora_B.copy_(0.1 * torch.randn(layer.lora_B.shape, generator=gen))


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model, before):
    now = model.state_dict()
    same = (
        torch.equal(a.nan_to_num(), b.nan_to_num())
        for a, b in zip(now.values(), before.values(), strict=True)
    )
    return now.keys() == before.keys() and all(same)


# --- choosing layers -----------------------------------------------------------------------------
def test_all_linear_skips_the_output_head_and_exclude_modules_works():
    model = add_lora(net(), "all-linear", r=2)
    assert sorted(minilora.lora_layers(model)) == [
        f"blocks.{i}.{p}" for i in range(3) for p in ("q_proj", "v_proj")
    ]
    model = add_lora(net(), "all-linear", r=2, exclude_modules=["blocks.1.q_proj", "v_proj"])
    assert sorted(minilora.lora_layers(model)) == ["blocks.0.q_proj", "blocks.2.q_proj"]
    model = net()
    before = state(model)
    with pytest.raises(ValueError, match="exclude_modules"):
        add_lora(model, "all-linear", exclude_modules=["k_proj"])  # a typo is an error
    with pytest.raises(ValueError, match="no layer is left"):
        add_lora(model, ["q_proj"], exclude_modules=["q_proj"])
    assert same_state(model, before) and not minilora.lora_layers(model)


def test_all_linear_on_transformers_skips_get_output_embeddings():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=32,
                                     n_positions=8, bos_token_id=0, eos_token_id=0)  # fmt: skip
    gpt = transformers.GPT2LMHeadModel(config)
    gpt.config.tie_word_embeddings = False
    layers = minilora.lora_layers(add_lora(gpt, "all-linear", r=2))
    assert "lm_head" not in layers and "transformer.h.0.attn.c_attn" in layers


def test_a_lone_string_is_a_regex_as_in_peft():
    model = add_lora(net(), ".*_proj", r=2)
    assert len(minilora.lora_layers(model)) == 6
    model = add_lora(net(), r"blocks\.[01]\.q_proj", r=2)
    assert sorted(minilora.lora_layers(model)) == ["blocks.0.q_proj", "blocks.1.q_proj"]
    model = add_lora(net(), "q_proj", r=2)  # a plain name keeps its meaning (a suffix)
    assert len(minilora.lora_layers(model)) == 3


def test_an_unknown_target_lists_a_short_relevant_set_of_names():
    torch.manual_seed(0)
    big = nn.ModuleList(
        nn.ModuleDict({n: nn.Linear(4, 4) for n in ("query", "key", "value")}) for _ in range(40)
    )
    with pytest.raises(ValueError) as info:
        add_lora(big, ["querry"])
    message = str(info.value)
    assert "matches no module" in message and "'querry'" in message
    assert len(message) < 400  # not 120 names
    candidates = message.split("Candidates: ")[1]
    assert candidates.startswith("*.query")  # the closest name comes first
    assert "7.query" not in message  # repeated layers are folded into *


# --- hyper-parameters ----------------------------------------------------------------------------
def test_numpy_scalars_from_a_sweep_are_numbers():
    for r, alpha in ((np.int64(4), np.float32(8.0)), (np.int32(2), np.int64(4))):
        model = add_lora(net(), ["q_proj"], r=r, alpha=alpha)
        layer = model.blocks[0]["q_proj"]
        assert layer.r == int(r) and type(layer.r) is int and layer.scaling == float(alpha) / int(r)
    with pytest.raises(ValueError, match="r must be an integer"):
        add_lora(net(), ["q_proj"], r=np.float64(4.0))


def test_a_rank_above_min_d_k_warns_with_the_break_even_rank():
    with pytest.warns(UserWarning, match=r"r=5 > min\(d, k\)=3.*d·k/\(d\+k\) = 2.0"):
        LoRALinear(nn.Linear(3, 6), r=5, alpha=5)
    with warnings_as_errors():
        LoRALinear(nn.Linear(3, 6), r=3, alpha=3)  # r = min(d, k): no warning


class warnings_as_errors:
    def __enter__(self):
        import warnings

        self.ctx = warnings.catch_warnings()
        self.ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc)


def test_a_second_add_lora_leaves_an_unfrozen_head_alone():
    model = add_lora(net(), ["q_proj"], r=2)
    model.head.requires_grad_(True)
    add_lora(model, ["v_proj"], r=2)
    assert model.head.weight.requires_grad and model.head.bias.requires_grad
    assert model.blocks[0]["v_proj"].lora_A.requires_grad
    assert not model.blocks[0]["v_proj"].base.weight.requires_grad


# --- merge, unmerge, unload, disable -------------------------------------------------------------
def test_merge_unmerge_unload_and_disable_a_merged_model():
    base = net()
    y0 = base(X)
    model = add_lora(copy.deepcopy(base), ".*_proj", r=2)
    randomize_B(model)
    y = model(X)
    merge_lora(model, unload=False)  # keeps the wrappers, merged
    assert all(layer.merged for layer in minilora.lora_layers(model).values())
    torch.testing.assert_close(model(X), y, rtol=0, atol=1e-5)
    weights = {n: m.base.weight.detach().clone() for n, m in minilora.lora_layers(model).items()}
    with minilora.disable_lora(model):  # a merged model, disabled: the base
        torch.testing.assert_close(model(X), y0, rtol=0, atol=1e-5)
    assert all(
        torch.equal(m.base.weight, weights[n]) for n, m in minilora.lora_layers(model).items()
    )  # the merged weights are back bit for bit
    unmerge_lora(model)
    torch.testing.assert_close(model(X), y, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="nothing to unmerge"):
        unmerge_lora(model)
    unloaded = unload_lora(model)  # no merge: the base comes back
    assert unloaded is model and not minilora.lora_layers(model)
    assert type(model.blocks[0]["q_proj"]) is nn.Linear
    torch.testing.assert_close(model(X), y0, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="no LoRA layers"):
        unload_lora(model)


def test_nan_is_never_merged():
    model = add_lora(net(), ["q_proj"], r=2)
    randomize_B(model)
    with torch.no_grad():
        model.blocks[1]["q_proj"].lora_A[0, 0] = float("nan")
    before = state(model)
    with pytest.raises(ValueError, match="blocks.1.q_proj.*NaN or inf"):
        merge_lora(model)
    with pytest.raises(ValueError, match="NaN or inf"):
        model.blocks[1]["q_proj"].merge()
    assert same_state(model, before)
    assert all(torch.isfinite(m.base.weight).all() for m in minilora.lora_layers(model).values())


def test_the_merged_flag_survives_a_state_dict_round_trip():
    model = add_lora(net(), ["q_proj"], r=2)
    randomize_B(model)
    y = model(X)
    model.blocks[0]["q_proj"].merge()
    saved = model.state_dict()
    fresh = add_lora(net(), ["q_proj"], r=2)
    fresh.load_state_dict(saved)
    assert fresh.blocks[0]["q_proj"].merged and not fresh.blocks[1]["q_proj"].merged
    torch.testing.assert_close(fresh(X), y, rtol=0, atol=1e-5)  # ΔW counted once, not twice


def test_base_state_dict_has_the_original_keys_and_values():
    base = net()
    model = add_lora(copy.deepcopy(base), ".*_proj", r=2)
    randomize_B(model)
    got, want = base_state_dict(model), base.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    net().load_state_dict(got)  # loads into a plain model
    model.blocks[0]["q_proj"].merge()
    with pytest.raises(ValueError, match="merged"):
        base_state_dict(model)
    bare = LoRALinear(nn.Linear(4, 3), r=1, alpha=1)
    assert sorted(base_state_dict(bare)) == ["bias", "weight"]
