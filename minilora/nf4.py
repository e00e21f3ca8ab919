"""NF4: the 4-bit NormalFloat format of QLoRA, written from scratch (chapters 05-06).

A weight matrix is stored as 4-bit *codes*, two per byte, plus one float scale per block of
``blocksize`` weights (the block's largest absolute value, ``absmax``). A code is an index into a
16-value table, ``NF4_CODEBOOK``, whose values sit at quantiles of the standard normal
distribution: pretrained weights are roughly normal, and equal-probability levels would use every
code equally often (the most entropy, not the least error). After dividing by a block's absmax the
weights are narrower than the levels assume, so in practice the codes are used 1.6-10 % of the time
each (chapter 05 measures it). Dequantizing is a table look-up times the block's absmax.

Double quantization stores the absmax scales themselves in 8 bits: subtract their mean, then run
the *same* blockwise quantizer over them (blocks of 256, with bitsandbytes' 8-bit "dynamic" code
table), keeping one fp32 scale per 256 absmax values. Storage per weight:

    no double quantization:  4 + 32/64              = 4.5 bits
    double quantization:     4 + 8/64 + 32/(64·256) ≈ 4.127 bits

Agreement with bitsandbytes (checked in ``tests/test_nf4.py`` against bitsandbytes ≥ 0.47 on the
CPU): the 4-bit codes are byte-identical, absmax equal and dequantized weights equal. With double
quantization the format is the same (same code table, mean, blocks and scales), and our
dequantizer reads bitsandbytes' state bit-exactly; the 8-bit absmax codes themselves can differ
for a few values, because bitsandbytes' CPU 8-bit kernel sometimes picks the second-nearest code
where ours picks the nearest (the test measures it and bounds the difference).

``Linear4bit`` is a frozen ``nn.Module`` that holds only this packed state and dequantizes in its
forward pass; ``quantize_model`` swaps a model's ``nn.Linear`` layers for it. LoRA on top of it is
QLoRA: ``minilora.add_lora`` accepts ``Linear4bit`` as a base because it offers what a base
needs (``in_features``, ``out_features`` and ``dequantize()``; this module registers nothing),
and ``merge_lora`` replaces it by ``Linear4bit.merged_with(ΔW)``, a new layer that re-quantizes
W + ΔW and records (and warns about) the rounding error merging introduces. The packed base
itself never changes.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from statistics import NormalDist

import torch
import torch.nn.functional as F
from torch import nn

from minilora.lora import base_features, dense_weight, is_packed, replace_module, tied_names
from minilora.targets import as_targets, name_matches, select

# ----------------------------------------------------------------------------------------------
# Code tables (each built from its definition, never pasted)
# ----------------------------------------------------------------------------------------------
# The outermost probability of the NF4 quantiles. The exact quantile at probability 1 is +inf, so
# the QLoRA paper stops short of it; the value used by bitsandbytes, 0.9677083, is (up to its last
# digit) the average of 1 - 1/(2·15) and 1 - 1/(2·16), a half-bin in from the end for 15 or 16 bins.
NF4_OFFSET = 0.9677083


def make_nf4_codebook(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 values: normal quantiles, zero exactly representable, scaled into [-1, 1].

    Eight positive values are the quantiles at 8 evenly spaced probabilities from ``offset`` down
    to 0.5 (0.5 itself, the median, is dropped), seven negative values likewise from 7, and 0 is
    added so a zero weight (e.g. padding) stays exactly zero. The probabilities are spaced in
    float32, as bitsandbytes does, so the table agrees with its table to the last bit.
    """
    quantile = NormalDist().inv_cdf
    probs_pos = torch.linspace(offset, 0.5, 9, dtype=torch.float32)[:-1].tolist()
    probs_neg = torch.linspace(offset, 0.5, 8, dtype=torch.float32)[:-1].tolist()
    positive = [quantile(p) for p in probs_pos]
    negative = [-quantile(p) for p in probs_neg]
    values = torch.tensor(sorted(negative + [0.0] + positive), dtype=torch.float32)
    return values / values.max()


def make_int4_codebook() -> torch.Tensor:
    """Symmetric int4: the 15 evenly spaced levels k/7, k = -7..7 (zero exact, -8 unused)."""
    return torch.arange(-7, 8, dtype=torch.float32) / 7


def make_fp4_codebook() -> torch.Tensor:
    """FP4 E2M1 (1 sign, 2 exponent, 1 mantissa bit; OCP MX format), scaled into [-1, 1].

    Exponent field e = 0 is subnormal (0 or 0.5); e = 1..3 gives 2^(e-1)·(1 + m/2): 1, 1.5, 2,
    3, 4, 6. With both signs that is 15 distinct values (+0 and -0 coincide).
    """
    magnitudes = []
    for e in range(4):
        for m in range(2):
            magnitudes.append(m * 0.5 if e == 0 else 2.0 ** (e - 1) * (1 + m / 2))
    values = sorted({s * v for v in magnitudes for s in (1.0, -1.0)})
    table = torch.tensor(values, dtype=torch.float32)
    return table / table.max()


def make_dynamic_codebook() -> torch.Tensor:
    """bitsandbytes' signed 8-bit "dynamic" table (Dettmers 2015), used for double quantization.

    Each of 7 decades 10^-6 .. 10^0 holds 2^i values (i = 0..6) at the midpoints of an even grid
    on [0.1, 1], with both signs: 2·(1 + 2 + ... + 64) = 254 values, plus 0 and 1 = 256. Small
    numbers get fine steps and large ones coarse steps, like a float with a variable exponent.
    """
    values = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0
        decade = 10.0 ** (i - 6)
        values += (decade * means).tolist() + (-decade * means).tolist()  # float32 products
    return torch.tensor(sorted(values), dtype=torch.float32)


NF4_CODEBOOK = make_nf4_codebook()
# Every byte holds two codes, so a byte has 256 possible (first, second) value pairs. Looking up
# whole bytes in this 256 × 2 table decodes two weights per look-up, with no unpacking step.
NF4_BYTE_PAIRS = torch.stack([NF4_CODEBOOK.repeat_interleave(16), NF4_CODEBOOK.repeat(16)], dim=1)
# The same table with each row's two float32s read as one 8-byte integer: PyTorch's CPU gather
# moves one 8-byte element per byte faster than a 2-wide row (1.5x on a 4096 x 4096 weight, 3-5x
# on chapter 11's small ones), and it copies the same bits: viewed back as float32 they are the
# row's two values, on any byte order.
_NF4_PAIR_BITS = NF4_BYTE_PAIRS.view(torch.int64).reshape(-1)
INT4_CODEBOOK = make_int4_codebook()
FP4_CODEBOOK = make_fp4_codebook()
DYNAMIC_CODEBOOK = make_dynamic_codebook()
ABSMAX_BLOCKSIZE = 256  # double quantization: absmax values per 8-bit block (QLoRA, bitsandbytes)

# An all-zero block has absmax 0; dividing by it would give 0/0 = NaN. Any tiny positive floor
# keeps 0 · (1/floor) = 0; 1e-38 is the floor bitsandbytes uses, so even blocks of subnormal
# numbers quantize identically.
_ABSMAX_FLOOR = 1e-38


# ----------------------------------------------------------------------------------------------
# Blockwise absmax quantization with any sorted code table
# ----------------------------------------------------------------------------------------------
def round_to_codebook(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index (uint8) of the nearest codebook value for each entry of ``x``; ties go to the lower.

    The nearest value is found by comparing ``x`` with the midpoints between neighbouring values:
    ``bucketize`` counts the midpoints strictly below x. That is one binary search per value, no
    16-wide (or 256-wide) distance table.
    """
    midpoints = (codebook[:-1] + codebook[1:]) / 2
    return torch.bucketize(x, midpoints, out_int32=True).to(torch.uint8)


def quantize_blockwise(
    x: torch.Tensor, codebook: torch.Tensor, blocksize: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten ``x``, cut it into blocks, scale each by 1/absmax and round to ``codebook``.

    Returns ``(indices, absmax)``: one uint8 index per element (``x.numel()`` of them) and one fp32
    absmax per block. The last block may be shorter (a ragged end). No Python loop over blocks:
    the flat vector is padded with zeros to whole blocks and viewed as a (blocks, blocksize)
    matrix; zeros change no block's absmax, and the padded indices are dropped.
    """
    flat = x.reshape(-1).float()
    n = flat.numel()
    n_blocks = -(-n // blocksize)  # ceil(n / blocksize)
    if n < n_blocks * blocksize:  # a ragged last block (padding copies, so only when needed)
        flat = F.pad(flat, (0, n_blocks * blocksize - n))
    blocks = flat.view(n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)
    # Multiply by the reciprocal (as bitsandbytes' 4-bit quantizer does): the last bit of the
    # scaled value decides the code of a value sitting exactly on a midpoint.
    scaled = blocks * (1.0 / absmax.clamp(min=_ABSMAX_FLOOR)).unsqueeze(1)
    indices = round_to_codebook(scaled.reshape(-1)[:n], codebook)
    return indices, absmax


def dequantize_blockwise(
    indices: torch.Tensor, absmax: torch.Tensor, codebook: torch.Tensor, blocksize: int
) -> torch.Tensor:
    """The inverse of ``quantize_blockwise``: ``codebook[index] · absmax`` of the index's block."""
    return scale_blocks(codebook.index_select(0, indices.int()), absmax, blocksize)


def scale_blocks(values: torch.Tensor, absmax: torch.Tensor, blocksize: int) -> torch.Tensor:
    """Multiply each block of ``blocksize`` consecutive values by its block's absmax."""
    n, n_blocks = values.numel(), absmax.numel()
    if n < n_blocks * blocksize:  # a ragged last block: pad to whole blocks, then cut
        values = F.pad(values, (0, n_blocks * blocksize - n))
    return (values.view(n_blocks, blocksize) * absmax.float().unsqueeze(1)).reshape(-1)[:n]


def pack_4bit(indices: torch.Tensor) -> torch.Tensor:
    """Two 4-bit indices per byte, the first in the high nibble (bitsandbytes' layout).

    An odd count is padded with index 7 (NF4's zero), as bitsandbytes pads with a zero weight.
    """
    if indices.numel() % 2:
        indices = torch.cat([indices, indices.new_full((1,), 7)])
    return (indices[0::2] << 4) | indices[1::2]


def unpack_4bit(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` 4-bit indices stored in ``packed`` (high nibble first)."""
    return torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)[:n]


def quantization_error(w: torch.Tensor, codebook: torch.Tensor, blocksize: int = 64) -> float:
    """Relative error ‖w - ŵ‖_F / ‖w‖_F of blockwise absmax quantization with ``codebook``.

    The same scheme for every table, so NF4, int4 and FP4 differ only in where the 16 levels sit.
    """
    _check_weight(w)
    indices, absmax = quantize_blockwise(w, codebook, blocksize)
    w_hat = dequantize_blockwise(indices, absmax, codebook, blocksize)
    flat = w.reshape(-1).float()
    return (torch.linalg.vector_norm(flat - w_hat) / torch.linalg.vector_norm(flat)).item()


def blocksize_tradeoff(w: torch.Tensor, blocksizes=(16, 32, 64, 128, 256, 1024, 4096)) -> list:
    """Error against storage for each blocksize: a list of dicts, one per blocksize.

    Each row holds ``blocksize``, ``bits`` and ``bits_dq`` (bits per weight measured from
    ``nbytes`` without / with double quantization) and ``error`` / ``error_dq`` (relative
    Frobenius error of the dequantized tensor).
    """
    rows = []
    for bs in blocksizes:
        row = {"blocksize": bs}
        for suffix, dq in (("", False), ("_dq", True)):
            q = quantize_nf4(w, bs, dq)
            err = torch.linalg.vector_norm(dequantize_nf4(q).float() - w.float())
            row["bits" + suffix] = q.bits_per_weight
            row["error" + suffix] = (err / torch.linalg.vector_norm(w.float())).item()
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# The NF4 tensor
# ----------------------------------------------------------------------------------------------
@dataclass
class NF4Tensor:
    """A weight tensor in NF4: packed 4-bit codes plus per-block scales. Not a torch.Tensor.

    - ``codes``: uint8, ``ceil(numel / 2)`` bytes, two codes per byte, first in the high nibble.
    - ``absmax``: without double quantization, fp32, one per block of ``blocksize`` weights. With
      it, uint8: the 8-bit codes (``DYNAMIC_CODEBOOK``) of ``absmax - absmax_mean``, in blocks of
      256 with one fp32 ``absmax_scale`` each.
    - ``shape`` and ``dtype`` of the original tensor, ``blocksize``.
    """

    codes: torch.Tensor
    absmax: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int
    absmax_scale: torch.Tensor | None = None  # fp32 per block of 256 absmax (double quant only)
    absmax_mean: torch.Tensor | None = None  # fp32 scalar subtracted first (double quant only)

    @property
    def double_quant(self) -> bool:
        return self.absmax_scale is not None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes actually held: codes + scales (+ the second-level scales and the mean).

        The code tables (16 and 256 fp32 values) are constants of the format, shared by every
        tensor, so they are not counted, just as a float's format is not stored with each float.
        """
        held = [self.codes, self.absmax, self.absmax_scale, self.absmax_mean]
        return sum(t.numel() * t.element_size() for t in held if t is not None)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.numel

    def block_absmax(self) -> torch.Tensor:
        """The fp32 absmax of every block (dequantizing the 8-bit absmax codes if needed)."""
        if not self.double_quant:
            return self.absmax.float()
        centred = dequantize_blockwise(
            self.absmax, self.absmax_scale, DYNAMIC_CODEBOOK, ABSMAX_BLOCKSIZE
        )
        return centred + self.absmax_mean

    def __repr__(self) -> str:
        dq = ", double_quant" if self.double_quant else ""
        return (
            f"NF4Tensor(shape={tuple(self.shape)}, blocksize={self.blocksize}{dq}, "
            f"{self.nbytes:,} bytes = {self.bits_per_weight:.3f} bits/weight)"
        )


def _check_weight(w) -> None:
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise ValueError(f"expected a floating-point torch.Tensor, got {type(w).__name__}")
    if w.numel() == 0:
        raise ValueError("cannot quantize an empty tensor")
    finite = torch.isfinite(w)
    if not finite.all():
        where = tuple(int(i) for i in torch.nonzero(~finite)[0])
        value = w[where].item()
        raise ValueError(
            f"the tensor has a non-finite value ({value}) at index {where}; "
            "NF4 scales by each block's absmax, which must be a finite number"
        )


def _check_blocksize(blocksize) -> None:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive integer (64 in QLoRA), got {blocksize!r}")


def quantize_nf4(w: torch.Tensor, blocksize: int = 64, double_quant: bool = True) -> NF4Tensor:
    """Quantize ``w`` (any shape, float16/bfloat16/float32) to NF4 in blocks of ``blocksize``.

    Raises ValueError for a non-float or empty tensor, a NaN or ±inf (naming its index), or a
    blocksize that is not a positive integer.
    """
    _check_weight(w)
    _check_blocksize(blocksize)
    indices, absmax = quantize_blockwise(w.detach(), NF4_CODEBOOK, blocksize)
    q = NF4Tensor(pack_4bit(indices), absmax, w.shape, w.dtype, blocksize)
    if double_quant:
        # The absmax values are all positive and similar in size: subtracting their mean centres
        # them on zero, so the signed 8-bit table's fine steps near zero are used.
        q.absmax_mean = absmax.mean()
        q.absmax, q.absmax_scale = quantize_blockwise(
            absmax - q.absmax_mean, DYNAMIC_CODEBOOK, ABSMAX_BLOCKSIZE
        )
    return q


def dequantize_nf4(q: NF4Tensor) -> torch.Tensor:
    """Back to a float tensor of the original shape and dtype: ``NF4_CODEBOOK[code] · absmax``."""
    if not isinstance(q, NF4Tensor):
        raise ValueError(f"dequantize_nf4 expects an NF4Tensor (from quantize_nf4), got {type(q)}")
    absmax = q.block_absmax().float()
    padded = absmax.numel() * q.blocksize  # whole blocks
    pairs = _NF4_PAIR_BITS.index_select(0, q.codes.int())  # NF4_BYTE_PAIRS[code], a fresh tensor
    values = pairs.view(torch.float32)  # 2 values per byte, first the high nibble's
    values = F.pad(values, (0, padded - values.numel())) if values.numel() < padded else values
    # Scale in place: a second full-size tensor would make this pass ~1.4x slower (benchmarks/).
    values[:padded].view(-1, q.blocksize).mul_(absmax.unsqueeze(1))
    return values[: q.numel].view(q.shape).to(q.dtype)


# ----------------------------------------------------------------------------------------------
# A frozen 4-bit linear layer, and swapping a model's layers for it
# ----------------------------------------------------------------------------------------------
class _MatmulNF4(torch.autograd.Function):
    """x · Wᵀ with W dequantized in the forward pass, and dequantized *again* in the backward.

    ``F.linear(x, dequantize(W))`` would save the dequantized W for the backward pass (dx = dy·W),
    so during training every layer's full-precision weight would stay alive until backward: the
    memory QLoRA exists to save. Saving only the packed NF4Tensor and dequantizing twice trades a
    little compute for that memory, as bitsandbytes does.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, q: NF4Tensor) -> torch.Tensor:
        ctx.q = q  # the packed state only (its tensors are the layer's buffers, not copies)
        return x @ dequantize_nf4(q).to(x.dtype).T

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return grad_out @ dequantize_nf4(ctx.q).to(grad_out.dtype), None  # no gradient for W


class Linear4bit(nn.Module):
    """A frozen linear layer whose weight lives only in NF4: y = x · dequantize(W)ᵀ + b.

    The packed codes and scales are registered buffers (so ``state_dict``, ``.to(device)`` and
    ``load_state_dict`` carry them); no full-precision copy of the weight is kept, not even for
    the backward pass (see ``_MatmulNF4``). Gradients flow to the input x (and so to a LoRA
    adapter or earlier layers), never to the codes. The bias, if any, stays in full precision
    (a frozen Parameter), as in bitsandbytes.

    The packed state never changes: ``.to(dtype)``/``.half()`` move it between devices but keep
    its dtypes (fp32 scales rounded to bf16 would be lost for good), and merging an adapter
    builds a *new* layer (``merged_with``). ``.weight`` is a read-only dequantized copy, for the
    parents that read it directly (``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``, T5).
    """

    def __init__(self, q: NF4Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if not isinstance(q, NF4Tensor) or len(q.shape) != 2:
            raise ValueError("Linear4bit needs a 2-D NF4Tensor weight of shape (out, in)")
        self.out_features, self.in_features = q.shape
        self.blocksize = q.blocksize
        self.compute_dtype = q.dtype  # the dtype the weight had, and that forward computes in
        self.register_buffer("codes", q.codes)
        self.register_buffer("absmax", q.absmax)
        self.register_buffer("absmax_scale", q.absmax_scale)  # None: not in the state_dict
        self.register_buffer("absmax_mean", q.absmax_mean)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), False)
        self.merge_error: dict[str, float] | None = None  # set on a layer made by merged_with

    @classmethod
    def from_linear(cls, linear: nn.Module, blocksize=64, double_quant=True) -> Linear4bit:
        """Quantize a dense linear layer's weight to NF4 (the layer itself is left unchanged).

        ``nn.Linear`` and transformers' ``Conv1D`` (weight stored (in, out)) are both dense.
        """
        if base_features(linear) is None or is_packed(linear):
            raise ValueError(
                f"from_linear expects a dense linear layer, got {type(linear).__name__}"
            )
        q = quantize_nf4(dense_weight(linear).detach(), blocksize, double_quant)
        return cls(q, linear.bias)

    def _apply(self, fn, recurse=True):
        before = {name: b for name, b in self._buffers.items() if b is not None}
        super()._apply(fn, recurse)
        for name, old in before.items():  # a new device is fine, a new dtype is not
            if self._buffers[name].dtype != old.dtype:
                self._buffers[name] = old.to(self._buffers[name].device)
        return self

    @property
    def double_quant(self) -> bool:
        return self.absmax_scale is not None

    @property
    def quantized(self) -> NF4Tensor:
        """The stored state as an NF4Tensor (sharing the buffers, not copying them)."""
        shape = torch.Size((self.out_features, self.in_features))
        state = (self.codes, self.absmax, shape, self.compute_dtype, self.blocksize)
        return NF4Tensor(*state, self.absmax_scale, self.absmax_mean)

    @property
    def nbytes(self) -> int:
        """Bytes of the packed weight (codes and scales), without the bias."""
        return self.quantized.nbytes

    def dequantize(self) -> torch.Tensor:
        """The (out, in) float weight this layer computes with (a fresh tensor each call)."""
        return dequantize_nf4(self.quantized)

    @property
    def weight(self) -> torch.Tensor:
        """A read-only view for parents that read ``.weight``: the dequantized weight."""
        return self.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _MatmulNF4.apply(x, self.quantized)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    @torch.no_grad()
    def merged_with(self, delta: torch.Tensor) -> Linear4bit:
        """A new 4-bit layer storing W + delta re-quantized; this one is left as it was.

        This is what merging a LoRA adapter into a 4-bit base does: dequantize, add ΔW,
        re-quantize. The merged weight is not W + ΔW but its nearest NF4 neighbour, so the
        merged model computes something slightly different from base + adapter (peft#1080,
        #2105). The new layer's ``merge_error`` records ``max_abs`` (largest |entry| of the error
        matrix), ``rel_fro`` (‖error‖_F / ‖W + ΔW‖_F) and ``rel_fro_delta`` (‖error‖_F / ‖ΔW‖_F,
        the error measured against the update itself), and a warning prints them.
        """
        shape = (self.out_features, self.in_features)
        if tuple(delta.shape) != shape:
            raise ValueError(f"delta has shape {tuple(delta.shape)}, this layer needs {shape}")
        target = self.dequantize().float() + delta.float()
        _check_weight(target)
        q = quantize_nf4(target.to(self.compute_dtype), self.blocksize, self.double_quant)
        merged = Linear4bit(q, self.bias).to(self.codes.device)
        err = dequantize_nf4(q).float() - target
        merged.merge_error = {
            "max_abs": err.abs().max().item(),
            "rel_fro": (err.norm() / target.norm().clamp(min=1e-30)).item(),
            "rel_fro_delta": (err.norm() / delta.float().norm().clamp(min=1e-30)).item(),
        }
        warnings.warn(
            "merging into a 4-bit base re-quantizes W + ΔW: max |error| = "
            f"{merged.merge_error['max_abs']:.3g}, relative error = "
            f"{merged.merge_error['rel_fro']:.3g} (= {merged.merge_error['rel_fro_delta']:.3g} "
            "of ‖ΔW‖)",
            stacklevel=3,
        )
        return merged

    def extra_repr(self) -> str:
        dq = ", double_quant" if self.double_quant else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, NF4 blocksize={self.blocksize}{dq}"
        )


def quantize_model(
    model, target_modules=None, skip_modules=(), blocksize=64, double_quant=True, untie=False
) -> nn.Module:
    """Swap a model's dense linear layers (``nn.Linear``, ``Conv1D``) for frozen ``Linear4bit``.

    ``target_modules``: None for every such layer, or names (matched as in ``add_lora``, see
    ``minilora.targets``) that must each match one. ``skip_modules``: names never quantized
    (e.g. a classifier head you will train). A layer whose weight is shared with another module
    (a tied output head) stays tied and in full precision: skipped when ``target_modules`` is
    None, refused when named, unless ``untie=True``. Everything is checked before the model
    changes: on ValueError it is untouched. Returns the model (changed in place).
    """
    _check_blocksize(blocksize)
    if base_features(model) is not None:
        raise ValueError("quantize_model works on a model; use Linear4bit.from_linear for a layer")
    names = [n for n, _ in model.named_modules() if n]
    dense = [n for n, m in model.named_modules() if base_features(m) and not is_packed(m)]
    skips = as_targets(skip_modules, "skip_modules") if skip_modules else []
    if skips:
        select(names, skips, what="module (skip_modules)")  # each entry must name something
    chosen = (
        dense
        if target_modules is None
        else select(dense, target_modules, what="dense linear layer")
    )
    chosen = [n for n in chosen if not any(name_matches(n, s) for s in skips)]
    tied = {n: shared for n in chosen if (shared := tied_names(model, n))}
    if tied and target_modules is not None and not untie:
        name, shared = next(iter(tied.items()))
        raise ValueError(
            f"{name!r} shares its weight with {', '.join(shared)} (tied weights): quantizing it "
            "would untie them. Pass untie=True to quantize it anyway"
        )
    chosen = [n for n in chosen if untie or n not in tied]
    for name in chosen:
        _check_weight(dense_weight(model.get_submodule(name)))  # NaN: fail before any swap
    for name in chosen:  # all checks passed: now mutate
        replace_module(
            model, name, Linear4bit.from_linear(model.get_submodule(name), blocksize, double_quant)
        )
    return model


def merge_errors(model: nn.Module) -> dict[str, dict[str, float]]:
    """The rounding error each 4-bit layer recorded when an adapter was merged into it."""
    return {
        name: m.merge_error
        for name, m in model.named_modules()
        if isinstance(m, Linear4bit) and m.merge_error is not None
    }


def model_nbytes(model: nn.Module) -> int:
    """Bytes held by a model's parameters and buffers (each shared tensor counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total
