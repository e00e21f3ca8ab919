"""Adapters on disk: only A and B, in safetensors, with the config that gives them meaning.

The companion of chapter 04. ``save_adapter(model, path)`` writes the LoRA tensors of a model
(``<layer>.lora_A``, ``<layer>.lora_B``) and, in the file's metadata, the config of every layer
(r, alpha, scaling rule, dropout, init: one file holds layers with different settings) and a
SHA-256 checksum over the config and the tensors. ``read_adapter`` checks a file and returns
(tensors, config); ``load_adapter`` puts it into a model, adding the LoRA layers if the model
has none yet. Every failed load leaves the model untouched.

Trained parameters that are not LoRA (a new classifier head, a bias) are never dropped
silently: name them in ``modules_to_save`` and they are saved (and loaded) with the adapter,
otherwise ``save_adapter`` refuses and lists them. ``export_peft`` writes the same adapter in
PEFT's layout (``adapter_config.json`` + ``adapter_model.safetensors``), which
``peft.PeftModel.from_pretrained`` loads.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import metadata
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from minilora.lora import (
    LoRALinear,
    base_features,
    check_hyperparameters,
    is_transposed,
    lora_layers,
    wrap_layers,
)
from minilora.targets import select

ADAPTER_FORMAT = "minilora-adapter-v2"
SETTINGS = ("r", "alpha", "dropout", "init", "use_rslora")  # the order LoRALinear takes them


def _version() -> str:
    """The installed minilora version, recorded in each file (read, not imported from above)."""
    try:
        return metadata.version("minilora")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def _key(layer: str, part: str) -> str:
    return f"{layer}.{part}" if layer else part  # a bare LoRALinear saves "lora_A", "lora_B"


def _settings(layer: LoRALinear) -> dict:
    rule = "alpha/sqrt(r)" if layer.use_rslora else "alpha/r"
    values = (layer.r, layer.alpha, layer.dropout_p, layer.init, layer.use_rslora)
    return dict(zip(SETTINGS, values, strict=True)) | {"scaling_rule": rule}


def layer_settings(config: dict, name: str) -> dict:
    """One layer's r, alpha, dropout, init and use_rslora: its own entry over the shared ones."""
    return {k: config[k] for k in SETTINGS if k in config} | config["layers"][name]


def _extra_parameters(model: nn.Module, modules_to_save) -> dict[str, nn.Parameter]:
    """Non-LoRA parameters to save: those of the modules (or parameters) named, by name."""
    params = {n: p for n, p in model.named_parameters() if not n.endswith(("lora_A", "lora_B"))}
    chosen = {}
    if modules_to_save is not None:
        names = [n for n, _ in model.named_modules() if n] + list(params)
        for name in select(names, modules_to_save, what="module or parameter (modules_to_save)"):
            chosen |= {n: p for n, p in params.items() if n == name or n.startswith(name + ".")}
    forgotten = sorted(n for n, p in params.items() if p.requires_grad and n not in chosen)
    if forgotten:
        raise ValueError(
            f"these parameters are trainable but not LoRA, and the adapter would drop them: "
            f"{forgotten}. Pass modules_to_save=[...] naming them (e.g. a new head) to save them "
            "with the adapter, or freeze them (requires_grad_(False)) if they were not trained"
        )
    return chosen


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (``<layer>.lora_A``, ``<layer>.lora_B``), detached copies."""
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if k.endswith((".lora_A", ".lora_B")) or k in ("lora_A", "lora_B")
    }


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict with its original keys (``fc1.weight``, not ``fc1.base.weight``).

    Refused while a layer is merged: its base weight then holds W0 + ΔW, not the base's W0.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("this model has no LoRA layers; its own state_dict() is the base's")
    merged = [n for n, layer in layers.items() if layer.merged]
    if merged:
        raise ValueError(f"layers {merged} are merged (W0 + ΔW); call unmerge_lora(model) first")
    out = {}
    for key, value in model.state_dict().items():
        owner = max((n for n in layers if not n or key.startswith(n + ".")), key=len, default=None)
        if owner is not None:
            prefix = owner + "." if owner else ""
            if not key.startswith(prefix + "base."):
                continue  # lora_A, lora_B, the merged flag
            key = prefix + key[len(prefix + "base.") :]
        out[key] = value
    return out


def _checksum(tensors: dict[str, torch.Tensor], config: str) -> str:
    """SHA-256 over the config text, then names, shapes and bytes: an edit anywhere is caught."""
    digest = hashlib.sha256(config.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_adapter(model: nn.Module, path: str | Path, modules_to_save=None) -> Path:
    """Write the adapter tensors of ``model`` (and ``modules_to_save``) to safetensors.

    The metadata holds the config (each layer's r, alpha, scaling rule, dropout and init; the
    shared ones also at the top level; the minilora version) and a checksum. Returns the path.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("this model has no LoRA layers to save (call add_lora first)")
    extra = _extra_parameters(model, modules_to_save)
    per_layer = {name: _settings(layer) for name, layer in layers.items()}
    shared = {k: v for k, v in next(iter(per_layer.values())).items()
              if all(s[k] == v for s in per_layer.values())}  # fmt: skip
    config = shared | {  # each layer keeps only what it does not share with every other
        "layers": {
            n: {k: v for k, v in s.items() if k not in shared} for n, s in per_layer.items()
        },
        "targets": sorted(layers),
        "modules_to_save": sorted(extra),
        "minilora_version": _version(),
    }
    tensors = {
        _key(n, p): getattr(m, p).detach() for n, m in layers.items() for p in ("lora_A", "lora_B")
    }
    tensors |= {name: p.detach() for name, p in extra.items()}
    tensors = {k: v.contiguous().clone() for k, v in tensors.items()}
    text = json.dumps(config)
    metadata_ = {"format": ADAPTER_FORMAT, "config": text, "sha256": _checksum(tensors, text)}
    path = Path(path)
    save_file(tensors, str(path), metadata=metadata_)
    return path


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read and check an adapter file: (tensors, config). ValueError if it is corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no adapter file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for bad headers/lengths
        raise ValueError(
            f"{path} is not a readable safetensors file (corrupt or truncated?): {err}"
        ) from err
    if meta.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{path} is not a minilora adapter (format {ADAPTER_FORMAT} expected)")
    try:
        config = json.loads(meta["config"])
        for name in config["layers"]:
            check_hyperparameters(*(layer_settings(config, name)[k] for k in SETTINGS))
        targets, saved = list(config["targets"]), list(config["modules_to_save"])
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError, ValueError) as err:
        raise ValueError(f"{path} has a broken adapter config: {err}") from err
    if meta.get("sha256") != _checksum(tensors, meta["config"]):
        raise ValueError(
            f"{path}: config or tensors do not match their checksum (edited or corrupt)"
        )
    expected = {_key(t, p) for t in targets for p in ("lora_A", "lora_B")} | set(saved)
    if set(tensors) != expected or sorted(config["layers"]) != sorted(targets):
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(f"{path}: adapter tensors missing {missing}, unexpected {extra}")
    for name, t in tensors.items():
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise ValueError(f"{path}: {name} is not a finite float tensor (NaN, inf or ints)")
    return tensors, config


def load_adapter(model: nn.Module, path: str | Path, trainable: bool = True) -> nn.Module:
    """Load an adapter file into ``model`` (in place) and return the model.

    If ``model`` has no LoRA layers yet, they are added with the file's per-layer config (a bare
    linear layer is wrapped, and the wrapper returned); if it has them (another customer's
    adapter), they must be the same layers with the same r, alpha and scaling rule, and their A
    and B are overwritten. Saved non-LoRA parameters (``modules_to_save``) are copied in. Every
    name, shape and setting is checked before anything changes: on a ValueError the model is
    untouched.

    ``trainable=True`` (the default) leaves the loaded tensors requiring grad, so training can
    continue right away; PEFT loads adapters frozen by default, a frequent surprise (peft#282).
    Pass ``trainable=False`` for inference.
    """
    tensors, config = read_adapter(path)
    per_layer = {name: layer_settings(config, name) for name in config["layers"]}
    existing = lora_layers(model)
    if existing and sorted(existing) != sorted(per_layer):
        raise ValueError(
            f"{path} adapts {sorted(per_layer)}, but this model has LoRA on {sorted(existing)}"
        )
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    for name, s in per_layer.items():
        layer = existing.get(name, modules.get(name))
        if name in existing:
            theirs, ours = (
                (s["r"], s["alpha"], s["use_rslora"]),
                (layer.r, layer.alpha, layer.use_rslora),
            )
            if theirs != ours:
                raise ValueError(
                    f"{path} was saved with (r, alpha, use_rslora) = {theirs}, but layer "
                    f"{name!r} has {ours}"
                )
            if layer.merged:
                raise ValueError(f"layer {name!r} is merged; unmerge it before loading new A, B")
        elif layer is None or base_features(layer) is None:
            raise ValueError(f"{path} adapts {name!r}, which is not a linear layer of this model")
        k, d = (layer.in_features, layer.out_features)
        for part, shape in (("lora_A", (s["r"], k)), ("lora_B", (d, s["r"]))):
            got = tuple(tensors[_key(name, part)].shape)
            if got != shape:
                raise ValueError(
                    f"{path}: {_key(name, part)} has shape {got}, this model needs {shape}"
                )
    for name in config["modules_to_save"]:
        if name not in params or params[name].shape != tensors[name].shape:
            raise ValueError(f"{path} saves {name!r}, which this model has not (in that shape)")
    # Every check passed: now change the model.
    if not existing:
        plan = {name: tuple(s[k] for k in SETTINGS) for name, s in per_layer.items()}
        if "" in plan:  # a file saved from a bare LoRALinear, loaded into a bare linear layer
            model = LoRALinear(model, *plan[""])
        else:
            wrap_layers(model, plan)
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            for part in ("lora_A", "lora_B"):
                getattr(layer, part).copy_(tensors[_key(name, part)]).requires_grad_(trainable)
        for name in config["modules_to_save"]:
            params[name].copy_(tensors[name]).requires_grad_(trainable)
    return model


# ----------------------------------------------------------------------------------------------
# PEFT's format
# ----------------------------------------------------------------------------------------------
def export_peft(model: nn.Module, directory: str | Path, modules_to_save=None) -> Path:
    """Write the adapter as PEFT does: ``adapter_config.json`` + ``adapter_model.safetensors``.

    ``peft.PeftModel.from_pretrained(base, directory)`` then computes what ``model`` computes.
    Per-layer r and alpha go to PEFT's ``rank_pattern``/``alpha_pattern``; PEFT has one
    ``use_rslora`` and one dropout per adapter, so mixed values there are refused.
    """
    layers = lora_layers(model)
    if not layers or "" in layers:
        raise ValueError("export_peft needs a model with LoRA layers inside it")
    extra = _extra_parameters(model, modules_to_save)
    for what in ("use_rslora", "dropout_p"):
        if len({getattr(layer, what) for layer in layers.values()}) > 1:
            raise ValueError(
                f"PEFT keeps one {what.removesuffix('_p')} per adapter; these layers mix them"
            )
    first = next(iter(layers.values()))
    exact = {
        name: "^" + re.escape(name) + "$" for name in layers
    }  # PEFT reads pattern keys as regexes
    config = {
        "peft_type": "LORA",
        "r": first.r,
        "lora_alpha": first.alpha,
        "target_modules": "|".join(f"(?:{re.escape(n)})" for n in layers),  # a string: a regex
        "rank_pattern": {exact[n]: m.r for n, m in layers.items()},
        "alpha_pattern": {exact[n]: m.alpha for n, m in layers.items()},
        "lora_dropout": first.dropout_p,
        "use_rslora": first.use_rslora,
        "fan_in_fan_out": any(is_transposed(m.base) for m in layers.values()),
        "modules_to_save": sorted({n.rpartition(".")[0] for n in extra}) or None,
        "bias": "none",
        "task_type": None,
        "inference_mode": True,
        "init_lora_weights": True,
        "base_model_name_or_path": None,
    }
    tensors = {
        f"base_model.model.{name}.{part}.weight": getattr(m, part).detach().contiguous().clone()
        for name, m in layers.items()
        for part in ("lora_A", "lora_B")
    }
    tensors |= {f"base_model.model.{n}": p.detach().contiguous().clone() for n, p in extra.items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    return directory
