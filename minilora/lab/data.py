"""Real data that needs no download, for the pretrained bases of chapters 07-08.

Two source → target pairs, each loaded into a Hugging Face ``datasets.DatasetDict`` with
deterministic ``train``/``val`` splits (nothing is fetched from the network):

1. Handwritten digits bundled with scikit-learn (1,797 images of 8×8 pixels, 0..16 grey levels).
   Source task: the upright digits. Target task: the same digits rotated 90° clockwise, so the
   labels keep their meaning but every pixel moves — the first layers must change.
2. Characters. Source domain: English prose from Python's own documentation
   (``pydoc_data.topics``, the language reference that ``help("if")`` prints). Target domain:
   Python source code of a fixed list of standard-library modules. Both are encoded with one
   shared character vocabulary (newline + printable ASCII + "unknown").

The text corpora are a fixed snapshot shipped with the package (``minilora/lab/corpora/*.jsonl``,
one ``{"name", "text"}`` document per line, taken from Python 3.11.7 by
``data/make_corpora.py``), so every Python version reads the same characters and the chapters
measure the same numbers.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from datasets import DatasetDict

# ``datasets`` is imported inside the functions that build datasets: it is slow to import, and
# ``import minilora`` should stay quick for the chapters that never touch data.

# --- digits -------------------------------------------------------------------------------------

N_DIGITS_VAL = 400  # images held out for validation (the remaining 1,397 train)
DIGITS_TASKS = ("upright", "rotated")


@functools.cache
def digits_dataset(task: str = "upright") -> DatasetDict:
    """The sklearn digits as a ``DatasetDict`` (train/val) with columns ``pixels`` and ``label``.

    ``pixels`` is the 8×8 image flattened to 64 floats in [0, 1]; ``task="rotated"`` turns every
    image 90° clockwise. The split is a fixed permutation, identical for both tasks, so the
    rotated validation images are the rotations of the upright validation images.
    """
    if task not in DIGITS_TASKS:
        raise ValueError(f"unknown digits task {task!r}; choose one of {DIGITS_TASKS}")
    from datasets import Dataset, DatasetDict
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # (1797, 8, 8), grey levels 0..16
    if task == "rotated":
        images = np.rot90(images, k=-1, axes=(1, 2))  # k=-1: clockwise
    pixels = images.reshape(len(images), 64)
    order = np.random.default_rng(0).permutation(len(images))  # fixed, independent of any seed
    splits = {"val": order[:N_DIGITS_VAL], "train": order[N_DIGITS_VAL:]}
    return DatasetDict(
        {
            name: Dataset.from_dict({"pixels": pixels[idx], "label": digits.target[idx]})
            for name, idx in splits.items()
        }
    )


def load_digits(
    task: str = "upright", split: str = "train", n: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensors ``(X, y)`` of one digits task and split: X (N, 64) float32, y (N,) int64.

    ``n`` keeps the first ``n`` examples (the split is already shuffled), for small-data runs.
    """
    ds = digits_dataset(task)
    if split not in ds:
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'val'")
    ds = ds[split].with_format("torch")
    if n is not None:
        if not 0 < n <= len(ds):
            raise ValueError(f"n={n} must be between 1 and {len(ds)} for split {split!r}")
        ds = ds.select(range(n))
    columns = ds[:]  # slicing a torch-formatted Dataset gives whole columns as tensors
    return columns["pixels"].float(), columns["label"].long()


# --- characters ---------------------------------------------------------------------------------

UNK = "\x00"  # stands for any character outside the vocabulary
VOCAB = UNK + "\n" + "".join(chr(i) for i in range(32, 127))  # unknown, newline, printable ASCII
VOCAB_SIZE = len(VOCAB)  # 97
_STOI = {ch: i for i, ch in enumerate(VOCAB)}
# Typographic characters of the docs mapped to their ASCII look-alikes rather than to UNK.
_ASCII = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"', "—": "-", "–": "-", "\t": "    "})

CORPORA_DIR = Path(__file__).resolve().parent / "corpora"  # {prose,code}_{train,val}.jsonl
TEXT_DOMAINS = ("prose", "code")


def encode(text: str) -> torch.Tensor:
    """Characters → int64 ids in the shared vocabulary (unknown characters → id 0)."""
    text = text.translate(_ASCII)
    return torch.tensor([_STOI.get(ch, 0) for ch in text], dtype=torch.long)


def decode(ids) -> str:
    """Ids → text; unknown characters are shown as '�'."""
    return "".join("�" if int(i) == 0 else VOCAB[int(i)] for i in ids)


def read_corpus(domain: str, split: str) -> list[dict[str, str]]:
    """The shipped documents of one domain and split: a list of ``{"name", "text"}`` dicts."""
    if domain not in TEXT_DOMAINS:
        raise ValueError(f"unknown text domain {domain!r}; choose 'prose' or 'code'")
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'val'")
    lines = (CORPORA_DIR / f"{domain}_{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@functools.cache
def load_text(domain: str = "prose", split: str = "train") -> torch.Tensor:
    """One long id tensor per domain and split: the documents joined by blank lines.

    ``domain`` is ``"prose"`` (source) or ``"code"`` (target). The result is cached; do not
    modify it in place.
    """
    return encode("\n\n".join(doc["text"] for doc in read_corpus(domain, split)))


def sample_lm_batch(
    ids: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of ``block_size`` characters (x) and the same windows shifted by one (y)."""
    starts = torch.randint(len(ids) - block_size - 1, (batch_size,), generator=generator)
    x = torch.stack([ids[s : s + block_size] for s in starts.tolist()])
    y = torch.stack([ids[s + 1 : s + block_size + 1] for s in starts.tolist()])
    return x, y


def fixed_lm_batches(
    ids: torch.Tensor, block_size: int, n_batches: int = 8, batch_size: int = 32
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Evenly spaced windows over the whole text: the same evaluation batches on every call."""
    n = n_batches * batch_size
    starts = torch.linspace(0, len(ids) - block_size - 2, n).long().tolist()
    x = torch.stack([ids[s : s + block_size] for s in starts])
    y = torch.stack([ids[s + 1 : s + block_size + 1] for s in starts])
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))


def unigram_cross_entropy(train_ids: torch.Tensor, val_ids: torch.Tensor) -> float:
    """Nats per character of ``val_ids`` under the train character frequencies (add-one smoothed).

    The baseline a language model must beat: it knows which characters are common, not context.
    """
    counts = torch.bincount(train_ids, minlength=VOCAB_SIZE).double() + 1.0
    log_p = torch.log(counts / counts.sum())
    return float(-log_p[val_ids].mean())
