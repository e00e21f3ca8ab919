"""minilora: LoRA and QLoRA from scratch, the package the course's notebooks are built on.

Read the modules in chapter order: ``lora_numpy`` (01-02), ``budget`` (03), ``lora`` (04),
``nf4`` (05-06), ``models``/``data``/``train``/``pretrain`` (07-08), ``widgets``, ``exercises``.
"""

__version__ = "0.1.0"

from minilora.course import COLORS, setup

# --- chapter 01-02: NumPy LoRA (minilora.lora_numpy) is used as a submodule: minilora.lora_numpy

# --- chapter 04: LoRA in PyTorch

# --- chapter 03: parameter and memory budget

# --- chapter 05-06: NF4 and QLoRA

# --- chapter 07-08: tiny bases, data, training

# --- homework checkers
