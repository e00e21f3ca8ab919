"""Adapters on disk: only A and B, in safetensors, with the config that gives them meaning.

The companion of chapter 04. ``save_adapter(model, path)`` writes the LoRA tensors of a model
(``<layer>.lora_A``, ``<layer>.lora_B``) and, in the file's metadata, the config (r, alpha,
scaling rule, dropout, init, the adapted layers) and a SHA-256 checksum. ``read_adapter`` checks
a file and returns (tensors, config); ``load_adapter`` puts it into a model, adding the LoRA
layers if the model has none yet. Every failed load leaves the model untouched.
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
    add_lora,
    check_hyperparameters,
    compute_scaling,
    is_linear_like,
    lora_layers,
    lora_state_dict,
)

ADAPTER_FORMAT = "minilora-adapter-v1"


def _version() -> str:
    """The installed minilora version, recorded in each file (read, not imported from above)."""
    try:
        return metadata.version("minilora")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def _adapter_config(layers: dict[str, LoRALinear]) -> dict:
    """The hyper-parameters every layer shares; adapters with mixed settings are refused."""
    settings = {(m.r, m.alpha, m.use_rslora, m.dropout_p, m.init) for m in layers.values()}
    if len(settings) > 1:
        raise ValueError(
            "the LoRA layers use different r/alpha/dropout/init settings; an adapter file holds "
            f"one setting: {sorted(settings, key=str)}"
        )
    r, alpha, use_rslora, dropout, init = settings.pop()
    return {
        "r": r,
        "alpha": alpha,
        "use_rslora": use_rslora,
        "scaling_rule": "alpha/sqrt(r)" if use_rslora else "alpha/r",
        "scaling": compute_scaling(r, alpha, use_rslora),
        "dropout": dropout,
        "init": init,
        "targets": sorted(layers),
        "minilora_version": _version(),
    }


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, shapes and bytes: a flipped byte in the file is caught on load."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write only the adapter tensors of ``model`` to a safetensors file; returns the path.

    The file's metadata holds the config (r, alpha, scaling rule, dropout, init, the adapted
    layer names, the minilora version) and a checksum of the tensors.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("this model has no LoRA layers to save (call add_lora first)")
    config = _adapter_config(layers)
    tensors = {k: v.contiguous() for k, v in lora_state_dict(model).items()}
    metadata = {
        "format": ADAPTER_FORMAT,
        "config": json.dumps(config),
        "sha256": _checksum(tensors),
    }
    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read and check an adapter file: (tensors, config). ValueError if it is corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no adapter file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for bad headers/lengths
        raise ValueError(
            f"{path} is not a readable safetensors file (corrupt or truncated?): {err}"
        ) from err
    if metadata.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{path} is not a minilora adapter (metadata format is missing)")
    try:
        config = json.loads(metadata["config"])
        check_hyperparameters(
            config["r"], config["alpha"], config["dropout"], config["init"], config["use_rslora"]
        )
        targets = list(config["targets"])
    except (KeyError, TypeError, json.JSONDecodeError, ValueError) as err:
        raise ValueError(f"{path} has a broken adapter config: {err}") from err
    if metadata.get("sha256") != _checksum(tensors):
        raise ValueError(f"{path}: the tensors do not match their checksum (the file is corrupt)")
    expected = {f"{t}.{p}" for t in targets for p in ("lora_A", "lora_B")}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(f"{path}: adapter tensors missing {missing}, unexpected {extra}")
    return tensors, config


def load_adapter(model: nn.Module, path: str | Path, trainable: bool = True) -> nn.Module:
    """Load an adapter file into ``model`` (in place) and return the model.

    If ``model`` has no LoRA layers yet, they are added with the file's config; if it has them
    (e.g. another customer's adapter), they must be the same layers with the same r, alpha and
    scaling rule, and their A and B are overwritten. Every name, shape and setting is checked
    before anything changes: on a ValueError the model is untouched.

    ``trainable=True`` (the default) leaves the loaded A and B requiring grad, so training can
    continue right away; PEFT loads adapters frozen by default, a frequent surprise (peft#282).
    Pass ``trainable=False`` for inference.
    """
    tensors, config = read_adapter(path)
    r, targets = config["r"], config["targets"]
    existing = lora_layers(model)
    if existing:
        if sorted(existing) != sorted(targets):
            raise ValueError(
                f"{path} adapts {targets}, but this model has LoRA on {sorted(existing)}"
            )
        for name, layer in existing.items():
            theirs = (config["r"], config["alpha"], config["use_rslora"])
            ours = (layer.r, layer.alpha, layer.use_rslora)
            if theirs != ours:
                raise ValueError(
                    f"{path} was saved with (r, alpha, use_rslora) = {theirs}, but layer "
                    f"{name!r} has {ours}"
                )
            if layer.merged:
                raise ValueError(f"layer {name!r} is merged; unmerge it before loading new A, B")
    modules = dict(model.named_modules())
    for name in targets:
        layer = existing.get(name, modules.get(name))
        if layer is None or not (isinstance(layer, LoRALinear) or is_linear_like(layer)):
            raise ValueError(f"{path} adapts {name!r}, which is not a Linear layer of this model")
        shapes = {
            "lora_A": (r, layer.in_features),
            "lora_B": (layer.out_features, r),
        }
        for part, shape in shapes.items():
            got = tuple(tensors[f"{name}.{part}"].shape)
            if got != shape:
                raise ValueError(
                    f"{path}: {name}.{part} has shape {got}, this model needs {shape} (r={r})"
                )
            if not tensors[f"{name}.{part}"].is_floating_point():
                raise ValueError(f"{path}: {name}.{part} is not a float tensor")
    # Every check passed: now change the model.
    if not existing:
        exact = [re.compile(re.escape(name)) for name in targets]
        add_lora(
            model,
            exact,
            r,
            config["alpha"],
            config["dropout"],
            config["init"],
            config["use_rslora"],
        )
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            layer.lora_A.copy_(tensors[f"{name}.lora_A"])
            layer.lora_B.copy_(tensors[f"{name}.lora_B"])
            layer.lora_A.requires_grad_(trainable)
            layer.lora_B.requires_grad_(trainable)
    return model
