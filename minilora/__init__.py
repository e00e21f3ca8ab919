"""minilora: LoRA and QLoRA from scratch, the package the course's notebooks are built on.

The names below are the homework API: adapt any PyTorch model, count what you train, keep
adapters on disk, and put a frozen base in 4-bit NF4 (QLoRA).

The idea modules read in chapter order:
``lora_numpy`` (01-02, NumPy with hand-derived gradients), ``budget`` (03, pure-Python
arithmetic), ``targets`` (the one name-matching rule), ``lora`` and ``adapters`` (04),
``nf4`` (05-06), ``intrinsic`` (09).

Two sub-packages: ``minilora.lab`` is what the chapters run on (data, tiny models and their
shipped checkpoints, training loops, forgetting, analysis); ``minilora.course`` holds the
course's helpers (``setup``, ``COLORS``, slider plumbing in ``widgets``, homework ``checkers``).
"""

__version__ = "0.1.0"

from minilora.lora import (
    LoRALinear,
    add_lora,
    count_parameters,
    disable_lora,
    lora_layers,
    lora_state_dict,
    merge_lora,
    trainable_report,
)
from minilora.adapters import load_adapter, read_adapter, save_adapter
from minilora.nf4 import (
    Linear4bit,
    NF4Tensor,
    dequantize_nf4,
    model_nbytes,
    quantize_model,
    quantize_nf4,
)

__all__ = [
    "LoRALinear",
    "add_lora",
    "count_parameters",
    "disable_lora",
    "dequantize_nf4",
    "Linear4bit",
    "load_adapter",
    "lora_layers",
    "lora_state_dict",
    "merge_lora",
    "model_nbytes",
    "NF4Tensor",
    "quantize_model",
    "quantize_nf4",
    "read_adapter",
    "save_adapter",
    "trainable_report",
]
