"""minilora: LoRA and QLoRA from scratch, the package the course's notebooks are built on.

The names below are the homework API: adapt any PyTorch model, count what you train, keep
adapters on disk (or export them for PEFT), and put a frozen base in 4-bit NF4 (QLoRA).

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
    merge_lora,
    trainable_report,
    unload_lora,
    unmerge_lora,
)
from minilora.adapters import (
    base_state_dict,
    export_peft,
    load_adapter,
    lora_state_dict,
    read_adapter,
    save_adapter,
)
from minilora.nf4 import (
    Linear4bit,
    NF4Tensor,
    dequantize_nf4,
    model_nbytes,
    quantize_model,
    quantize_nf4,
)

__all__ = [
    # the layer and the model-level verbs (chapter 04)
    "LoRALinear",
    "add_lora",
    "merge_lora",
    "unmerge_lora",
    "unload_lora",
    "disable_lora",
    "lora_layers",
    "count_parameters",
    "trainable_report",
    # state dicts and adapter files
    "lora_state_dict",
    "base_state_dict",
    "save_adapter",
    "read_adapter",
    "load_adapter",
    "export_peft",
    # NF4 and QLoRA (chapters 05-06)
    "NF4Tensor",
    "quantize_nf4",
    "dequantize_nf4",
    "Linear4bit",
    "quantize_model",
    "model_nbytes",
]
