"""Pretrain the two tiny bases, save them as safetensors, and load the shipped checkpoints.

The recipe is deterministic (fixed seed, one thread) and regenerates the checkpoints that ship
inside the package, in ``minilora/lab/checkpoints/``::

    python -m minilora.lab.pretrain digits   # checkpoints/digits_mlp.safetensors, a few seconds
    python -m minilora.lab.pretrain gpt      # checkpoints/char_gpt.safetensors, a few minutes

A checkpoint is a ``safetensors`` file (tensors only: no pickle, nothing executes on load) whose
metadata holds the model's config and the metrics measured right after pretraining, as JSON.
``load_pretrained("digits_mlp")`` / ``load_pretrained("char_gpt")`` rebuild the model from it.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from minilora.lab.data import load_digits, load_text, unigram_cross_entropy
from minilora.lab.models import CharGPT, DigitsMLP, GPTConfig, MLPConfig
from minilora.lab.train import accuracy, lm_loss_on, train_classifier, train_lm

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"  # package data
MODELS = {"digits_mlp": (DigitsMLP, MLPConfig), "char_gpt": (CharGPT, GPTConfig)}

# The recipes (change them and re-run the command to regenerate a checkpoint).
DIGITS_RECIPE = dict(seed=0, steps=1500, lr=3e-3, batch_size=64)
GPT_RECIPE = dict(seed=0, steps=4000, lr=3e-3, batch_size=32)
GPT_EVAL_BATCHES = 8  # the evaluation the metrics (and tests) use: 8 × 32 windows of 64 chars


def save_checkpoint(model: torch.nn.Module, name: str, metrics: dict, path: Path | None = None):
    """Write weights, config and ``metrics`` to ``path`` (default: in ``CHECKPOINT_DIR``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; choose one of {sorted(MODELS)}")
    path = Path(path) if path is not None else CHECKPOINT_DIR / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "name": name,
        "config": json.dumps(asdict(model.config)),
        "metrics": json.dumps(metrics),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def checkpoint_metadata(name: str, path: Path | None = None) -> dict:
    """The ``name``, ``config`` and ``metrics`` stored in a checkpoint (JSON decoded)."""
    path = _checkpoint_path(name, path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    return {"name": meta["name"], **{k: json.loads(meta[k]) for k in ("config", "metrics")}}


def load_pretrained(name: str, path: Path | None = None) -> torch.nn.Module:
    """The shipped pretrained base ``"digits_mlp"`` or ``"char_gpt"``, in eval mode."""
    path = _checkpoint_path(name, path)
    model_cls, config_cls = MODELS[name]
    model = model_cls(config_cls(**checkpoint_metadata(name, path)["config"]))
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def _checkpoint_path(name: str, path: Path | None) -> Path:
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; choose one of {sorted(MODELS)}")
    path = Path(path) if path is not None else CHECKPOINT_DIR / f"{name}.safetensors"
    if not path.exists():
        raise ValueError(
            f"no checkpoint at {path}; run `python -m minilora.lab.pretrain ...` first"
        )
    return path


def digits_metrics(model: torch.nn.Module) -> dict:
    """Accuracy of a digits model on both tasks' validation splits (and the upright train)."""
    return {
        "upright_train_acc": accuracy(model, *load_digits("upright", "train")),
        "upright_val_acc": accuracy(model, *load_digits("upright", "val")),
        "rotated_val_acc": accuracy(model, *load_digits("rotated", "val")),
    }


def gpt_metrics(model: torch.nn.Module) -> dict:
    """Nats/char of a character model on both domains' validation text, with unigram baselines."""
    prose_train, code_train = load_text("prose", "train"), load_text("code", "train")
    prose_val, code_val = load_text("prose", "val"), load_text("code", "val")
    return {
        "prose_val_loss": lm_loss_on(model, prose_val, GPT_EVAL_BATCHES),
        "code_val_loss": lm_loss_on(model, code_val, GPT_EVAL_BATCHES),
        "prose_unigram_loss": unigram_cross_entropy(prose_train, prose_val),
        "code_unigram_loss": unigram_cross_entropy(code_train, code_val),
    }


def pretrain_digits(seed: int = 0, steps: int = 1500, lr: float = 3e-3, batch_size: int = 64):
    """Train a ``DigitsMLP`` on the upright digits; returns ``(model, metrics)``."""
    torch.manual_seed(seed)
    model = DigitsMLP(MLPConfig())
    X, y = load_digits("upright", "train")
    train_classifier(
        model, X, y, steps, lr, batch_size=batch_size, seed=seed, schedule="cosine", desc="digits"
    )
    return model, digits_metrics(model)


def pretrain_gpt(seed: int = 0, steps: int = 4000, lr: float = 3e-3, batch_size: int = 32):
    """Train a ``CharGPT`` on the English prose; returns ``(model, metrics)``."""
    torch.manual_seed(seed)
    model = CharGPT(GPTConfig())
    train_lm(
        model, load_text("prose", "train"), steps, lr, batch_size=batch_size, seed=seed,
        schedule="cosine", desc="char gpt",
    )  # fmt: skip
    return model, gpt_metrics(model)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["digits", "gpt"])
    parser.add_argument(
        "--out", type=Path, default=None, help="default: CHECKPOINT_DIR/<name>.safetensors"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # float sums depend on thread count: one thread, one result
    torch.use_deterministic_algorithms(True)
    start = time.time()
    if args.model == "digits":
        name, (model, metrics) = "digits_mlp", pretrain_digits(**DIGITS_RECIPE)
    else:
        name, (model, metrics) = "char_gpt", pretrain_gpt(**GPT_RECIPE)
    path = save_checkpoint(model, name, metrics, args.out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n_params:,} parameters, {time.time() - start:.0f} s → {path}")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
