"""minilora: LoRA and QLoRA from scratch, the package the course's notebooks are built on.

Read the modules in chapter order: ``lora_numpy`` (01-02), ``budget`` (03), ``lora`` (04),
``nf4`` (05-06), ``models``/``data``/``pretrain``/``train``/``analysis`` (07),
``forgetting`` (08), ``intrinsic`` (09). Shared by all chapters: ``course`` (seeds, threads,
colours) and ``widgets`` (sliders). Homework: ``exercises``.
"""

__version__ = "0.1.0"

from minilora.course import COLORS, setup

# --- chapter 01-02: NumPy LoRA (minilora.lora_numpy) is used as a submodule: minilora.lora_numpy
from minilora import lora_numpy  # top-level LoRALinear is the PyTorch one (chapter 04)

# --- chapter 03: parameter and memory budget
from minilora.budget import (
    GPT3_175B,
    LLAMA2_70B,
    LLAMA_7B,
    LLAMA_65B,
    MINILM_L6,
    MemoryBreakdown,
    ModelShape,
    compare_memory,
    count_lora_parameters,
    describe,
    estimate_memory,
    format_bytes,
    format_count,
    lora_params,
    memory_table,
)

# --- chapter 04: LoRA in PyTorch
from minilora.lora import (
    LINEAR_TYPES,
    LoRALinear,
    add_lora,
    count_parameters,
    disable_lora,
    lora_layers,
    load_adapter,
    lora_state_dict,
    merge_lora,
    read_adapter,
    save_adapter,
    trainable_report,
)

# --- chapter 05-06: NF4 and QLoRA
from minilora.nf4 import (
    FP4_CODEBOOK,
    INT4_CODEBOOK,
    NF4_CODEBOOK,
    Linear4bit,
    NF4Tensor,
    dequantize_nf4,
    merge_errors,
    model_nbytes,
    quantization_error,
    quantize_model,
    quantize_nf4,
)

# --- chapter 07-08: tiny bases, data, training
from minilora.analysis import (
    energy_captured,
    is_lora,
    random_subspace_similarity,
    rank_sweep,
    subspace_similarity,
    summarize,
    truncate_rank,
    weight_deltas,
    with_truncated_deltas,
)
from minilora.data import VOCAB_SIZE, decode, encode, load_digits, load_text
from minilora.models import CharGPT, DigitsMLP, GPTConfig, MLPConfig
from minilora.pretrain import checkpoint_metadata, load_pretrained
from minilora.train import (
    accuracy,
    evaluate,
    l2_toward,
    lm_loss_on,
    train,
    train_classifier,
    train_lm,
)
from minilora.forgetting import Recipe, best_lr, finetune, forgetting_at, lr_sweep, prose_to_code

# --- chapter 09: intrinsic dimension (θ = θ0 + P·θ_d)
from minilora.intrinsic import FastfoodProjection, IntrinsicModel, find_d90

# --- homework checkers (call them as minilora.exercises.check_...; ExerciseError on a mistake)
from minilora import exercises
from minilora.exercises import ExerciseError
