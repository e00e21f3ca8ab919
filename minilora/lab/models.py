"""The two small base models of chapters 07-08: an MLP for digits and a character-level GPT.

Both are written so that LoRA can find their layers by name. Every weight matrix is a plain
``nn.Linear`` with its own name (never ``nn.MultiheadAttention``, which hides q, k and v in one
fused parameter), so ``add_lora(model, ["q_proj", "v_proj"])`` adapts attention only,
``["fc1", "fc2"]`` the MLPs only, and all six names every linear layer of a transformer block.

- ``DigitsMLP``: 8×8 images (64 pixels) → ``fc1`` → ``fc2`` → ``head`` (10 classes).
- ``CharGPT``: a nanoGPT-style decoder: token + position embeddings, ``n_layer`` blocks of
  pre-LayerNorm causal self-attention (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``) and an MLP
  (``fc1``, ``fc2``), a final LayerNorm and an ``lm_head`` tied to nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MLPConfig:
    """Sizes of the digits classifier."""

    n_in: int = 64  # 8×8 pixels
    n_hidden: int = 256
    n_classes: int = 10


class DigitsMLP(nn.Module):
    """A two-hidden-layer ReLU network: x (batch, 64) → logits (batch, 10)."""

    def __init__(self, config: MLPConfig | None = None):
        super().__init__()
        self.config = config or MLPConfig()
        c = self.config
        self.fc1 = nn.Linear(c.n_in, c.n_hidden)
        self.fc2 = nn.Linear(c.n_hidden, c.n_hidden)
        self.head = nn.Linear(c.n_hidden, c.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x))
        h = F.relu(self.fc2(h))
        return self.head(h)


@dataclass
class GPTConfig:
    """Sizes of the character-level GPT (defaults: the shipped ``char_gpt`` checkpoint)."""

    vocab_size: int = 97  # minilora.lab.data.VOCAB_SIZE
    block_size: int = 64  # context length in characters
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    d_ff: int = 256  # hidden width of each block's MLP (4 × d_model, as in GPT-2)
    dropout: float = 0.0


class CausalSelfAttention(nn.Module):
    """Multi-head attention where position t only sees positions ≤ t."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        if c.d_model % c.n_head != 0:
            raise ValueError(f"d_model={c.d_model} must be divisible by n_head={c.n_head}")
        self.n_head = c.n_head
        self.q_proj = nn.Linear(c.d_model, c.d_model)
        self.k_proj = nn.Linear(c.d_model, c.d_model)
        self.v_proj = nn.Linear(c.d_model, c.d_model)
        self.o_proj = nn.Linear(c.d_model, c.d_model)
        self.dropout = c.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        # (B, T, C) → (B, n_head, T, head_size): each head attends in its own subspace
        q, k, v = (
            proj(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side again
        return self.o_proj(y)


class FeedForward(nn.Module):
    """The block's MLP: d_model → d_ff → d_model with a GELU in between."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.fc1 = nn.Linear(c.d_model, c.d_ff)
        self.fc2 = nn.Linear(c.d_ff, c.d_model)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """One transformer block: x + attn(ln(x)), then x + mlp(ln(x)) (pre-LayerNorm, as GPT-2)."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(c.d_model)
        self.attn = CausalSelfAttention(c)
        self.ln2 = nn.LayerNorm(c.d_model)
        self.mlp = FeedForward(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    """A tiny decoder-only transformer over characters: ids (B, T) → next-char logits (B, T, V)."""

    def __init__(self, config: GPTConfig | None = None):
        super().__init__()
        self.config = config or GPTConfig()
        c = self.config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.block_size, c.d_model)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size)
        self.apply(self._init_weights)
        # GPT-2's trick: shrink the layers that write into the residual stream, so its variance
        # does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "fc2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size={self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    @torch.no_grad()
    def generate(
        self, idx: torch.Tensor, n_new: int, temperature: float = 1.0, generator=None
    ) -> torch.Tensor:
        """Append ``n_new`` sampled characters to each row of ``idx`` (B, T)."""
        for _ in range(n_new):
            logits = self(idx[:, -self.config.block_size :])[:, -1, :] / temperature
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx
