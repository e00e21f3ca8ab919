"""Fine-tuning through a random projection: θ = θ0 + P·θ_d, the companion of chapter 09.

Aghajanyan et al. (2020, "Intrinsic Dimensionality Explains the Effectiveness of Language Model
Fine-Tuning") freeze every one of a model's D parameters at their pretrained values θ0 and train
only d numbers θ_d, mapped into the full parameter space by a fixed random D × d matrix P. The
smallest d that reaches 90 % of full fine-tuning is the task's *intrinsic dimension* d90.

Why not a dense P. For the course's digits MLP, D = 85,002; a dense Gaussian P with d = 10,000
would hold 850 million floats (3.4 GB). Regenerating its columns chunk by chunk from a seed saves
the memory but costs D·d random numbers on every forward *and* backward pass, far too slow to sweep
d in a notebook. So, like the paper (and Li et al. 2018 before it), we use the **Fastfood**
transform, a structured matrix that is applied in about O(n log n) time and stored in O(n)
memory:

    P·θ_d = first D entries of  H · G · Π · H · B · pad(θ_d) / (√D · ‖g‖)

with n the next power of two ≥ max(D, d), ``pad`` appending zeros up to length n, and

- B: a diagonal of random ±1 signs,
- H: the n × n Walsh–Hadamard matrix (entries ±1, H·Hᵀ = n·I), applied by the fast transform,
- Π: a random permutation,
- G: a diagonal of standard normal numbers g.

Each column of the n × n matrix H·G·Π·H·B has squared length exactly n·‖g‖² (H multiplies
lengths by √n, Π and B keep them, and the vector G meets has ±1 entries), spread evenly over the
rows on average; keeping D rows and dividing by √D·‖g‖ gives columns of length ≈ 1 (exactly 1
when D = n), like a dense Gaussian matrix with N(0, 1/D) entries; distinct columns are nearly
orthogonal. The three random vectors (B, Π, G) are drawn from a seeded generator: the whole
projection is reproducible from ``(D, d, seed)`` and costs three length-n vectors of memory.

Everything here is ordinary PyTorch arithmetic, so autograd gives ∂loss/∂θ_d = Pᵀ·∂loss/∂θ for
free. ``IntrinsicModel`` wraps a pretrained model: its only trainable parameter is ``theta_d``
(zeros, so it starts as the pretrained model), and ``minilora.lab.train.train_classifier`` trains it
like any other model.
"""

from __future__ import annotations

import copy
import functools
import math

import torch
from torch import nn
from torch.func import functional_call


def hadamard_transform(v: torch.Tensor) -> torch.Tensor:
    """H·v for the unnormalized n × n Walsh–Hadamard matrix (n = len(v), a power of two).

    H_n is a Kronecker product of small Hadamard matrices, H_n = H_a ⊗ H_b ⊗ ... (a·b·... = n).
    Viewing v as an a × b × ... array, the product applies H_a along the first axis, H_b along
    the second, and so on: a few small matmuls, O(n·(a + b + ...)) work instead of n², and no
    n × n matrix in memory. Factors of 64 keep the matmuls small and the loop short (three
    rounds for n = 2^17), which on a CPU beats the textbook log2(n) rounds of additions.
    Each axis is transformed in place of its neighbours (viewing v as pre × m × post and
    multiplying by H_m from the left, batched over pre), so no round copies v into a new layout.
    """
    n = v.shape[-1]
    if v.dim() != 1 or n < 1 or n & (n - 1):
        raise ValueError(f"the Hadamard transform needs a 1-D power-of-two length, got {n}")
    bits = n.bit_length() - 1
    sizes = [1 << min(HADAMARD_BLOCK_BITS, bits - i) for i in range(0, bits, HADAMARD_BLOCK_BITS)]
    x, pre = v, 1
    for m in sizes:
        post = n // (pre * m)
        h = _small_hadamard(m, v.dtype, v.device)
        if post == 1:  # the last axis: rows of length m times H_m (symmetric)
            x = x.reshape(pre, m) @ h
        else:  # H_m along the middle axis of pre × m × post, batched over pre
            x = torch.matmul(h, x.reshape(pre, m, post))
        pre *= m
    return x.reshape(n)


HADAMARD_BLOCK_BITS = 6  # Kronecker factors of size 2**6 = 64


@functools.lru_cache(maxsize=32)
def _small_hadamard(m: int, dtype, device) -> torch.Tensor:
    """The m × m Sylvester–Hadamard matrix: H_1 = [1], H_2m = [[H, H], [H, -H]] (symmetric).

    Cached: every training step needs the same few; callers never modify it.
    """
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < m:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


class FastfoodProjection(nn.Module):
    """A fixed random D × d matrix P with unit-length columns, applied without ever storing it.

    ``projection(theta_d)`` returns P·θ_d (length D) for θ_d of length d. Memory: three vectors
    of length n = next power of two ≥ max(D, d). See the module docstring for the construction.
    """

    def __init__(self, D: int, d: int, seed: int = 0):
        super().__init__()
        for name, value in (("D", D), ("d", d)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if d > D:
            raise ValueError(f"d={d} must not exceed D={D}: θ_d lives in a subspace of θ")
        self.D, self.d, self.seed = D, d, seed
        self.n = 1 << math.ceil(math.log2(max(D, d, 2)))
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("signs", torch.randint(0, 2, (self.n,), generator=gen) * 2.0 - 1.0)
        self.register_buffer("perm", torch.randperm(self.n, generator=gen))
        gauss = torch.randn(self.n, generator=gen)
        self.register_buffer("gauss", gauss)
        # Every column of H·G·Π·H·B has squared norm n·‖g‖², spread evenly over its n rows in
        # expectation; we keep D rows, so dividing by √D·‖g‖ gives columns of length ≈ 1.
        self.norm = math.sqrt(self.D) * gauss.norm().item()

    def forward(self, theta_d: torch.Tensor) -> torch.Tensor:
        if theta_d.shape != (self.d,):
            raise ValueError(f"theta_d must have shape ({self.d},), got {tuple(theta_d.shape)}")
        v = nn.functional.pad(theta_d, (0, self.n - self.d))  # pad(θ_d) with zeros
        v = hadamard_transform(self.signs.to(v.dtype) * v)  # H·B
        v = self.gauss.to(v.dtype) * v[self.perm]  # G·Π
        return hadamard_transform(v)[: self.D] / self.norm  # H, keep D rows, columns of length ≈ 1

    def columns(self, idx) -> torch.Tensor:
        """The columns ``idx`` of P as a (D, len(idx)) matrix (for tests and small checks)."""
        eye = torch.eye(self.d)
        return torch.stack([self(eye[j]) for j in idx], dim=1)

    def extra_repr(self) -> str:
        return f"D={self.D:,}, d={self.d:,}, n={self.n:,} (Fastfood), seed={self.seed}"


class IntrinsicModel(nn.Module):
    """A frozen pretrained model whose parameters move only along P: θ = θ0 + P·θ_d.

    Every parameter of ``base`` takes part (weights and biases of all layers), flattened in
    ``named_parameters`` order into one vector of length D. ``theta_d`` (length d, zeros) is the
    only trainable tensor, so the wrapped model starts exactly as the pretrained one. The base
    module itself is never modified: its parameters are read as θ0 once and frozen.
    """

    def __init__(self, base: nn.Module, d: int, seed: int = 0):
        super().__init__()
        params = dict(base.named_parameters())
        if not params:
            raise ValueError("the base model has no parameters to fine-tune")
        self.base = base.requires_grad_(False)
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        theta0 = torch.cat([p.detach().reshape(-1) for p in params.values()])
        self.register_buffer("theta0", theta0.clone())
        self.D = theta0.numel()
        self.projection = FastfoodProjection(self.D, d, seed)
        self.theta_d = nn.Parameter(torch.zeros(d, dtype=theta0.dtype))

    @property
    def d(self) -> int:
        return self.projection.d

    def full_parameters(self) -> dict[str, torch.Tensor]:
        """θ0 + P·θ_d, split back into the base's named tensors (differentiable in θ_d)."""
        theta = self.theta0 + self.projection(self.theta_d)
        chunks = theta.split([math.prod(s) for s in self.shapes])
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}

    def forward(self, *args, **kwargs):
        return functional_call(self.base, self.full_parameters(), args, kwargs)

    @torch.no_grad()
    def to_base(self) -> nn.Module:
        """A plain copy of the base model holding θ0 + P·θ_d (for saving or fast inference)."""
        model = copy.deepcopy(self.base)
        for name, tensor in self.full_parameters().items():
            model.get_parameter(name).copy_(tensor)
        return model

    def extra_repr(self) -> str:
        return f"D={self.D:,} frozen, d={self.d:,} trainable"


def find_d90(dims, gains, full_gain: float, fraction: float = 0.9) -> int | None:
    """The smallest d whose gain reaches ``fraction`` of full fine-tuning's gain (None if none).

    ``gains[i]`` is the metric gain over the base model reached with ``dims[i]`` trainable numbers
    (chapter 09: validation-accuracy gain on the rotated digits). Aghajanyan et al.'s d90 uses
    ``fraction=0.9``.
    """
    if len(dims) != len(gains):
        raise ValueError(f"{len(dims)} dims but {len(gains)} gains")
    if not full_gain > 0:
        raise ValueError(f"full fine-tuning must improve on the base (gain {full_gain})")
    hits = [d for d, g in zip(dims, gains, strict=True) if g >= fraction * full_gain]
    return min(hits) if hits else None
