"""LoRA layer speed: minilora's ``LoRALinear`` against PEFT's LoRA layer and the frozen base.

One 4096 × 4096 float32 layer, r = 8, a batch of 512 tokens. Both LoRA layers wrap the *same*
``nn.Linear`` object and carry the same A and B (B random, so the adapter path is not a no-op);
their outputs are checked to agree before anything is timed.

The arithmetic limit. A base forward costs 2·n·k·d floating-point operations; the two thin
LoRA matmuls add 2·n·r·(k + d), so unmerged LoRA can at best take 1 + r·(d+k)/(d·k) times the
base's forward time. A training step also runs backward. The frozen base still owes dx = dy·W0
(2·n·k·d, earlier layers need it) but no dW; LoRA's backward owes dB, dh, dA and dh·A
(4·n·r·(k + d)). So the forward+backward limit is 1 + 1.5·r·(d+k)/(d·k). Merged, the layer *is*
a plain Linear: limit 1.

``run_linear4bit`` times a 4-bit layer's forward and forward+backward: minilora's
``Linear4bit`` against bitsandbytes' ``Linear4bit`` (NF4, double quantization, fp32 compute)
and the fp32 ``nn.Linear``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import minilora
from benchmarks.timing import ratio_rows, time_rounds

D = K = 4096  # out_features, in_features
R, ALPHA = 8, 16
TOKENS = 512


def flop_limit(d: int, k: int, r: int, backward: bool) -> float:
    """Best possible time of unmerged LoRA relative to the frozen base (see the docstring)."""
    extra = r * (d + k) / (d * k)
    return 1 + (1.5 if backward else 1.0) * extra


class _Holder(nn.Module):
    """A one-layer model, so PEFT's ``get_peft_model`` has a named Linear to adapt."""

    def __init__(self, proj: nn.Linear):
        super().__init__()
        self.proj = proj

    def forward(self, x):
        return self.proj(x)


def make_layers(d: int = D, k: int = K, r: int = R, alpha: float = ALPHA, seed: int = 0):
    """(base, minilora layer, PEFT layer, merged Linear): one base, the same A and B in both."""
    import peft

    torch.manual_seed(seed)
    base = nn.Linear(k, d, bias=False)
    ours = minilora.LoRALinear(base, r, alpha)
    with torch.no_grad():
        ours.lora_B.normal_(0.0, 0.02)  # a trained-looking B: the adapter path must count
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], lora_dropout=0.0)
    theirs = peft.get_peft_model(_Holder(base), config).base_model.model.proj
    with torch.no_grad():
        theirs.lora_A["default"].weight.copy_(ours.lora_A)
        theirs.lora_B["default"].weight.copy_(ours.lora_B)
    merged = copy.deepcopy(ours)
    merged.merge()
    return base, ours, theirs, merged.base


def _train_step(layer: nn.Module, x: torch.Tensor, dy: torch.Tensor):
    """One forward+backward: gradients for the input and every trainable tensor."""

    def step():
        x.grad = None
        for p in layer.parameters():
            p.grad = None
        layer(x).backward(dy)

    return step


def _forward(layer: nn.Module, x: torch.Tensor):
    def forward():
        with torch.no_grad():
            layer(x)

    return forward


def run(repeats: int = 5, warmup: int = 1) -> list[dict]:
    """Rows for the forward+backward and the forward-only comparisons (ratios to the base)."""
    base, ours, theirs, merged = make_layers()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(TOKENS, K, generator=gen).requires_grad_(True)
    dy = torch.randn(TOKENS, D, generator=gen)
    with torch.no_grad():  # the same function, or the comparison means nothing
        y_ours, y_peft, y_merged = ours(x), theirs(x), merged(x)
        assert torch.allclose(y_ours, y_peft, atol=1e-4), (y_ours - y_peft).abs().max()
        assert torch.allclose(y_ours, y_merged, atol=1e-3), (y_ours - y_merged).abs().max()
    rows = []
    for backward in (True, False):
        layers = {"frozen base": base, "minilora LoRALinear": ours, "PEFT lora.Linear": theirs}
        if not backward:  # merged is for inference: a training step needs A and B apart
            layers["merged (minilora)"] = merged
        limit = flop_limit(D, K, R, backward)
        notes = {
            "minilora LoRALinear": f"FLOP limit {limit:.4f}",
            "PEFT lora.Linear": f"FLOP limit {limit:.4f}",
            "merged (minilora)": "limit 1",
        }
        fns = {
            name: _train_step(layer, x, dy) if backward else _forward(layer, x)
            for name, layer in layers.items()
        }
        what = "forward+backward" if backward else "forward (no grad)"
        group = f"LoRA layer {what}: {D}×{K}, r={R}, {TOKENS} tokens, float32"
        rows += ratio_rows(group, time_rounds(fns, repeats, warmup), "frozen base", notes)
    return rows


def profile_step(layer: nn.Module, x: torch.Tensor, dy: torch.Tensor, steps: int = 3) -> dict:
    """Seconds per training step in big matmuls, thin (rank-r) matmuls and everything else.

    From ``torch.profiler`` (self CPU time of each op, so nothing is counted twice): a matmul
    is thin if one of its input dimensions is at most the rank.
    """
    from torch.profiler import ProfilerActivity, profile

    step = _train_step(layer, x, dy)
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    parts = {"big": 0.0, "thin": 0.0, "other": 0.0}
    for event in prof.key_averages(group_by_input_shape=True):
        seconds = event.self_cpu_time_total / 1e6 / steps
        if event.key in ("aten::mm", "aten::addmm", "aten::bmm"):
            dims = [d for shape in event.input_shapes if len(shape) == 2 for d in shape]
            parts["thin" if dims and min(dims) <= R else "big"] += seconds
        else:
            parts["other"] += seconds
    return parts


def run_breakdown() -> list[dict]:
    """Where minilora's LoRA training step spends its time, next to the FLOP shares."""
    _, ours, _, _ = make_layers()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(TOKENS, K, generator=gen).requires_grad_(True)
    dy = torch.randn(TOKENS, D, generator=gen)
    parts = profile_step(ours, x, dy)
    group = "minilora LoRA step, where the time goes (torch.profiler, self time per step)"
    limit = flop_limit(D, K, R, backward=True) - 1
    cases = {
        "x·W0ᵀ and dy·W0 (the frozen base)": (parts["big"], "FLOP share 1"),
        f"thin matmuls (rank {R})": (parts["thin"], f"FLOP share {limit:.4f}"),
        "element-wise and autograd bookkeeping": (parts["other"], "no matmul FLOPs"),
    }
    return [
        {
            "group": group,
            "case": case,
            "seconds": seconds,
            "ratio": seconds / parts["big"],
            "vs": "x·W0ᵀ and dy·W0 (the frozen base)",
            "note": note,
            "how": "mean over 3 profiled steps",
        }
        for case, (seconds, note) in cases.items()
    ]


def make_4bit_layers(d: int = D, k: int = K, seed: int = 0):
    """(fp32 nn.Linear, minilora Linear4bit, bitsandbytes Linear4bit NF4): the same weight."""
    import bitsandbytes as bnb

    torch.manual_seed(seed)
    linear = nn.Linear(k, d, bias=False)
    ours = minilora.Linear4bit.from_linear(linear, blocksize=64, double_quant=True)
    theirs = bnb.nn.Linear4bit(
        k, d, bias=False, compute_dtype=torch.float32, compress_statistics=True, quant_type="nf4"
    )
    theirs.weight = bnb.nn.Params4bit(
        linear.weight.detach().clone(), requires_grad=False, quant_type="nf4",
        compress_statistics=True, blocksize=64,
    )  # fmt: skip
    theirs = theirs.to("cpu")  # bitsandbytes quantizes when the module is moved to a device
    return linear, ours, theirs


def run_linear4bit(repeats: int = 5, warmup: int = 1) -> list[dict]:
    """Rows for the 4-bit layers' forward (no grad) and forward+backward (dx), vs fp32 Linear.

    The backward of a frozen layer computes dx = dy·W. Both 4-bit layers keep only the packed
    state for it and dequantize W a second time in backward (time traded for memory: keeping
    the fp32 W from the forward would hold a full-precision copy of every layer until backward).
    """
    linear, ours, theirs = make_4bit_layers()
    linear.requires_grad_(False)  # a frozen base, as under QLoRA
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(TOKENS, K, generator=gen).requires_grad_(True)
    dy = torch.randn(TOKENS, D, generator=gen)
    with torch.no_grad():
        diff = (ours(x) - theirs(x)).abs().max().item()
        scale = linear(x).abs().max().item()
    assert diff < 1e-3 * scale, f"minilora and bitsandbytes 4-bit layers differ by {diff}"
    layers = {
        "fp32 nn.Linear": linear,
        "minilora Linear4bit": ours,
        "bitsandbytes Linear4bit": theirs,
    }
    rows = []
    for backward in (False, True):
        fns = {
            name: _train_step(layer, x, dy) if backward else _forward(layer, x)
            for name, layer in layers.items()
        }
        what = "forward+backward (dx)" if backward else "forward (no grad)"
        group = f"4-bit layer {what}: {D}×{K}, NF4 + double quant, {TOKENS} tokens"
        rows += ratio_rows(group, time_rounds(fns, repeats, warmup), "fp32 nn.Linear")
    return rows
