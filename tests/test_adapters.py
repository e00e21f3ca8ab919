"""minilora.adapters: what an adapter file keeps, what it refuses, and PEFT's format.

Trained non-LoRA parameters are saved (modules_to_save) or the save is refused; the config is
under the checksum; NaN is refused at load; one file holds layers with different r and alpha;
a bare LoRALinear round-trips; export_peft is loaded by peft.PeftModel.from_pretrained.
"""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import minilora
from minilora import LoRALinear, add_lora, load_adapter, read_adapter, save_adapter
from minilora.adapters import _checksum, export_peft


class Classifier(nn.Module):
    """A pretrained body and a new head, as in "fine-tune on my own classes"."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(12, 12)
        self.classifier = nn.Linear(12, 3)

    def forward(self, x):
        return self.classifier(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def body(seed=0):
    torch.manual_seed(seed)
    return Classifier()


X = torch.randn(7, 6, generator=torch.Generator().manual_seed(5))


def train_a_little(model, steps=20):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model.eval()


def trained_with_head():
    model = add_lora(body(), ["fc1", "fc2"], r=2, alpha=4)
    model.classifier.requires_grad_(True)  # the new head trains fully
    return train_a_little(model)


def test_a_trained_head_is_never_dropped_silently(tmp_path):
    model = trained_with_head()
    with pytest.raises(ValueError, match=r"classifier.bias', 'classifier.weight'.*modules_to_save"):
        save_adapter(model, tmp_path / "a.safetensors")
    assert not (tmp_path / "a.safetensors").exists()
    path = save_adapter(model, tmp_path / "a.safetensors", modules_to_save=["classifier"])
    reloaded = load_adapter(body(), path)  # a fresh body with an untrained head
    torch.testing.assert_close(reloaded(X), model(X), rtol=0, atol=0)
    assert reloaded.classifier.weight.requires_grad  # trainable, as the loaded adapters are
    _, config = read_adapter(path)
    assert config["modules_to_save"] == ["classifier.bias", "classifier.weight"]
    with pytest.raises(ValueError, match="matches no module or parameter"):
        save_adapter(model, tmp_path / "b.safetensors", modules_to_save=["clasifier"])


def test_an_edited_config_fails_the_checksum(tmp_path):
    model = add_lora(body(), ["fc1"], r=2, alpha=16)
    path = save_adapter(model, tmp_path / "a.safetensors")
    with safe_open(str(path), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    config = json.loads(meta["config"])
    config["layers"]["fc1"]["alpha"] = 64.0  # a valid, different alpha: 4x the update
    config["alpha"] = 64.0
    edited = tmp_path / "edited.safetensors"
    save_file(tensors, str(edited), metadata={**meta, "config": json.dumps(config)})
    fresh = body()
    with pytest.raises(ValueError, match="checksum"):
        load_adapter(fresh, edited)
    assert not minilora.lora_layers(fresh)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_is_refused_at_load(tmp_path, bad):
    model = add_lora(body(), ["fc1"], r=2)
    with torch.no_grad():
        model.fc1.lora_B[0, 0] = bad
    path = save_adapter(model, tmp_path / "a.safetensors")  # saving is allowed: it is a record
    fresh = body()
    with pytest.raises(ValueError, match="fc1.lora_B is not a finite float tensor"):
        load_adapter(fresh, path)
    assert not minilora.lora_layers(fresh)


def test_one_file_holds_layers_with_different_r_and_alpha(tmp_path):
    model = add_lora(body(), ["fc1"], r=2, alpha=4)
    add_lora(model, ["fc2"], r=6, alpha=3, use_rslora=True)
    model = train_a_little(model)
    path = save_adapter(model, tmp_path / "a.safetensors")
    _, config = read_adapter(path)
    assert config["layers"]["fc1"]["r"] == 2 and config["layers"]["fc2"]["r"] == 6
    assert "r" not in config and config["init"] == "gaussian"  # shared settings stay on top
    fresh = load_adapter(body(), path)
    assert (fresh.fc1.r, fresh.fc2.r, fresh.fc2.scaling) == (2, 6, 3 / 6**0.5)
    torch.testing.assert_close(fresh(X), model(X), rtol=0, atol=0)


def test_a_bare_lora_layer_round_trips(tmp_path):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 4), r=2, alpha=4)
    with torch.no_grad():
        layer.lora_B.normal_()
    path = save_adapter(layer, tmp_path / "layer.safetensors")
    twin = LoRALinear(copy.deepcopy(layer.base), r=2, alpha=4)
    assert load_adapter(twin, path) is twin
    torch.testing.assert_close(twin(X), layer(X), rtol=0, atol=0)
    wrapped = load_adapter(copy.deepcopy(layer.base), path)  # a plain nn.Linear gets wrapped
    assert isinstance(wrapped, LoRALinear)
    torch.testing.assert_close(wrapped(X), layer(X), rtol=0, atol=0)


def test_the_checksum_covers_the_config_text():
    tensors = {"a": torch.ones(2)}
    assert _checksum(tensors, '{"r": 2}') != _checksum(tensors, '{"r": 4}')


# --- PEFT's format -------------------------------------------------------------------------------
def test_export_peft_loads_in_peft_with_equal_outputs(tmp_path):
    model = add_lora(body(), ["fc1"], r=2, alpha=4)
    add_lora(model, ["fc2"], r=5, alpha=10)  # per-layer r and alpha: rank/alpha patterns
    model.classifier.requires_grad_(True)
    model = train_a_little(model)
    out = export_peft(model, tmp_path / "peft", modules_to_save=["classifier"])
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    theirs = peft.PeftModel.from_pretrained(body(), out).eval()
    assert (theirs(X) - model(X)).abs().max() <= 1e-6
    layers = {n: m for n, m in theirs.base_model.model.named_modules() if hasattr(m, "lora_A")}
    assert layers["fc2"].r["default"] == 5 and layers["fc1"].r["default"] == 2


def test_export_peft_of_gpt2_conv1d(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=32,
                                     n_positions=8, bos_token_id=0, eos_token_id=0)  # fmt: skip
    base = transformers.GPT2LMHeadModel(config).eval()
    ours = add_lora(copy.deepcopy(base), ["c_attn", "c_fc"], r=2)
    with torch.no_grad():
        for layer in minilora.lora_layers(ours).values():
            layer.lora_B.normal_(0, 0.1)
    export_peft(ours, tmp_path / "gpt2")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "gpt2").eval()
    ids = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (theirs(ids).logits - ours(ids).logits).abs().max() <= 1e-5


def test_export_peft_refuses_what_peft_cannot_hold(tmp_path):
    model = add_lora(body(), ["fc1"], r=2, use_rslora=True)
    add_lora(model, ["fc2"], r=2)
    with pytest.raises(ValueError, match="one use_rslora per adapter"):
        export_peft(model, tmp_path / "x")
    with pytest.raises(ValueError, match="inside it"):
        export_peft(LoRALinear(nn.Linear(2, 2), r=1, alpha=1), tmp_path / "y")
