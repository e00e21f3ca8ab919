"""Training memory beyond the weights (chapter 06): activations, measured and estimated.

``minilora.budget`` counts what a training run holds *per parameter* (weights, gradients,
optimizer state). The other large part is *activations*: the tensors the forward pass keeps for
the backward pass. They scale with the number of tokens in a step, not with the parameters, and
LoRA does not shrink them: an adapter deep in the network still needs the gradient to flow back
through every frozen layer above it.

- ``saved_activation_bytes(model, run)``: the bytes autograd saves while ``run(model)`` builds
  the graph, counted on real tensors (each storage once; the model's own parameters and buffers
  are not counted, they are held anyway).
- ``llama_activation_numbers(...)``: the same count per token for a LLaMA-style decoder
  (transformers' ``LlamaForCausalLM`` with minilora's LoRA), written out term by term;
  ``tests/test_memory.py`` checks it against ``saved_activation_bytes`` on a small random Llama.
- ``activation_bytes(...)``: that count for a whole step (batch × sequence length), with or
  without gradient checkpointing, in bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ATTENTION = ("eager", "sdpa")


def saved_activation_bytes(model: nn.Module, run: Callable[[nn.Module], object]) -> int:
    """Bytes of the tensors autograd keeps for backward while ``run(model)`` executes.

    Every saved tensor is counted by its storage, once (views of one tensor share a storage), and
    the storages of ``model``'s parameters and buffers are left out: a frozen weight saved for
    the input gradient costs no extra memory. ``run`` should return the loss; nothing is
    backpropagated here.
    """
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(model)
    return sum(saved.values())


def llama_activation_numbers(
    d_model: int,
    d_ffn: int,
    n_heads: int,
    seq_len: int,
    *,
    d_kv: int | None = None,
    lora_r: int = 0,
    attention: str = "sdpa",
) -> int:
    """Numbers one decoder block keeps for backward, per token of a step.

    Counted from what transformers' Llama block saves (checked in ``tests/test_memory.py``):
    - the two RMSNorms: each its input (d) and one 1/rms per token;
    - attention: q after RoPE (d), k and v (``d_kv`` each with ``"sdpa"``; d each with
      ``"eager"``, which repeats grouped-query k and v to every head before the product), the
      input of o_proj (d), the normalized input shared by q/k/v (d); plus the softmax
      probabilities, n_heads·seq_len per token, with ``"eager"`` attention, or one log-sum-exp
      per head with ``"sdpa"`` (memory-efficient attention recomputes the probabilities);
    - the SwiGLU MLP: the normalized input (d), gate and up outputs, SiLU(gate) and their
      product, the input of down_proj (4·d_ffn);
    - with LoRA (``lora_r > 0``) on all seven projections: each adapter's h = x·Aᵀ (r numbers);
      without it (full fine-tuning), the two norms' weight gradients also need the normalized
      activations before the weight (2·d).
    """
    if attention not in ATTENTION:
        raise ValueError(f"unknown attention {attention!r}; choose one of {ATTENTION}")
    kv = d_model if d_kv is None or attention == "eager" else d_kv
    norms = 2 * (d_model + 1)
    attn = 3 * d_model + 2 * kv + (n_heads * seq_len if attention == "eager" else n_heads)
    mlp = d_model + 4 * d_ffn
    params = 7 * lora_r if lora_r else 2 * d_model
    return norms + attn + mlp + params


def activation_bytes(
    d_model: int,
    d_ffn: int,
    n_heads: int,
    n_layers: int,
    vocab: int,
    batch: int,
    seq_len: int,
    *,
    d_kv: int | None = None,
    lora_r: int = 0,
    attention: str = "sdpa",
    checkpointing: bool = False,
    bytes_per_number: int = 2,
) -> dict[str, int]:
    """Activation bytes of one training step of a LLaMA-style decoder, part by part.

    ``blocks``: every block's saved numbers (``llama_activation_numbers``) for batch·seq_len
    tokens; with ``checkpointing`` only each block's input (d_model per token) is kept and one
    block's activations are rebuilt at a time during backward, so ``blocks`` is n_layers·d_model
    + one block's count. ``head``: the final norm's input and 1/rms (d_model + 1), with full
    fine-tuning also the normalized activations its weight and lm_head's weight need (2·d_model),
    and the log-softmax of the logits in fp32 (vocab·4 bytes per token; the loss is computed in
    fp32). Activations in ``bytes_per_number`` (2: bf16). Not counted: the gradients of
    activations during backward (about one block's worth at a time), RoPE's cos/sin tables, the
    token ids, and the framework's workspace.
    """
    tokens = batch * seq_len
    block = llama_activation_numbers(
        d_model, d_ffn, n_heads, seq_len, d_kv=d_kv, lora_r=lora_r, attention=attention
    )
    kept = n_layers * d_model + block if checkpointing else n_layers * block
    head = (d_model + 1 + (0 if lora_r else 2 * d_model)) * bytes_per_number + vocab * 4
    return {"blocks": tokens * kept * bytes_per_number, "head": tokens * head}
