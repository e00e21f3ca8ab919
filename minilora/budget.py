"""Counting what LoRA saves: trainable parameters, checkpoint bytes and training memory.

LoRA's case is arithmetic. A frozen d×k matrix W0 gets two trainable factors, B (d×r) and A (r×k),
so an adapted matrix trains ``r·(d + k)`` numbers instead of ``d·k``. Summed over a model, that is
the trainable-parameter count; multiplied by bytes per number, it is the size of a checkpoint and
the memory that training needs. This module does that arithmetic for any model:

- ``lora_params(d_out, d_in, r)``: the numbers one adapted matrix trains.
- ``ModelShape``: a model written as its weight matrices (name, shape, how many) plus the count of
  every other parameter (embeddings, norms). ``describe(model)`` builds one from a real PyTorch
  module; ``GPT3_175B``, ``LLAMA_7B``, ``LLAMA_65B``, ``LLAMA2_70B`` and ``MINILM_L6`` are built
  from published shapes. ``count_lora_parameters(shape, targets, r)`` gives (trainable, total)
  exactly as ``minilora.count_parameters`` reports them after ``add_lora`` on the real model.
- ``estimate_memory(method, ...)``: bytes of weights, master copy, adapters, gradients and
  optimizer state for full fine-tuning, LoRA and QLoRA, each with its own precision.
  Activations are out of scope: they depend on batch size, sequence length and checkpointing,
  not on the parameter count, so the estimate is a lower bound on what a GPU must hold.

Units: bytes are decimal (1 GB = 10^9 bytes, as disk vendors and the papers use them);
``format_bytes`` prints them that way. GPU memory is binary: a "48 GB" card holds 48 GiB =
48·2^30 ≈ 51.5e9 bytes, so compare with ``gpu_bytes(48)``, not 48e9.
"""

from __future__ import annotations

from dataclasses import dataclass

from minilora.targets import layer_pattern, select  # the rule add_lora uses too

# Bits stored per weight. NF4 stores a 4-bit code plus, per block of 64 weights, one fp32 absmax
# (32/64 = 0.5 bits). Double quantization stores that absmax in 8 bits and adds one fp32 scale
# per 256 absmax values: 8/64 + 32/(64·256) ≈ 0.127 bits (QLoRA, Dettmers et al. 2023, §3).
BITS_PER_PARAM = {
    "fp32": 32.0,
    "fp16": 16.0,
    "bf16": 16.0,
    "int8": 8.0,
    "nf4": 4.0 + 32 / 64,
    "nf4+dq": 4.0 + 8 / 64 + 32 / (64 * 256),
}
QUANTIZED = ("nf4", "nf4+dq")  # frozen storage only: these weights cannot be trained directly

# Numbers an optimizer keeps per trainable parameter: Adam's two moments, SGD's momentum buffer.
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd-momentum": 1, "sgd": 0}

METHODS = ("full", "lora", "qlora")
GIB = 2**30  # bytes in a GiB: GPU memory sizes ("24 GB", "48 GB", "80 GB") are in these units


def gpu_bytes(label_gb: float) -> float:
    """Bytes on a GPU sold as ``label_gb`` "GB": GPU memory is binary, so 48 → 48·2^30 ≈ 51.5e9."""
    if not label_gb > 0:
        raise ValueError(f"a GPU size must be positive, got {label_gb!r}")
    return label_gb * GIB


# --- one matrix ------------------------------------------------------------------------------


def _check_positive_int(value, what: str) -> None:
    # bool is an int in Python; r=True would silently mean r=1, so refuse it too.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


def break_even_rank(d_out: int, d_in: int) -> float:
    """The rank at which LoRA's r·(d_out + d_in) numbers equal the matrix's d_out·d_in.

    r_be = d_out·d_in / (d_out + d_in) (half the harmonic mean of the two sides; d/2 for a square
    d×d). Below it the adapter is smaller than the matrix it adapts; from it on, it is not.
    """
    _check_positive_int(d_out, "d_out")
    _check_positive_int(d_in, "d_in")
    return d_out * d_in / (d_out + d_in)


def lora_params(d_out: int, d_in: int, r: int) -> int:
    """Trainable numbers LoRA adds to one (d_out × d_in) matrix: B is d_out×r, A is r×d_in."""
    _check_positive_int(d_out, "d_out")
    _check_positive_int(d_in, "d_in")
    _check_positive_int(r, "r (the LoRA rank)")
    return r * (d_out + d_in)


# --- a model as a list of matrices -----------------------------------------------------------


@dataclass(frozen=True)
class Matrix:
    """``count`` weight matrices called ``name``, each (d_out, d_in) as PyTorch stores them.

    ``name`` is a module path with layer indices written as ``*``
    (``"layers.*.self_attn.q_proj"``), so one entry stands for the same matrix in every layer:
    ``layers.0.self_attn.q_proj``, ``layers.1.self_attn.q_proj``, ... (``module_names`` lists
    them when they are not simply 0 … count-1, as ``describe`` does for a live module).
    ``bias`` says whether each has a bias vector (counted in the model, never adapted).
    """

    name: str
    d_out: int
    d_in: int
    count: int = 1
    bias: bool = False
    module_names: tuple[str, ...] = ()

    def __post_init__(self):
        for value, what in ((self.d_out, "d_out"), (self.d_in, "d_in"), (self.count, "count")):
            _check_positive_int(value, f"{what} of {self.name!r}")
        if self.module_names and len(self.module_names) != self.count:
            raise ValueError(
                f"{self.name!r}: {len(self.module_names)} names for count={self.count}"
            )

    @property
    def params(self) -> int:
        """Parameters of all ``count`` matrices, biases included."""
        return self.count * (self.d_out * self.d_in + (self.d_out if self.bias else 0))

    def names(self) -> list[str]:
        """The module name of each of the ``count`` matrices."""
        if self.module_names:
            return list(self.module_names)
        if "*" not in self.name:
            return [self.name] * self.count
        return [self.name.replace("*", str(i)) for i in range(self.count)]


@dataclass(frozen=True)
class ModelShape:
    """A model as its adaptable matrices plus ``other``: every parameter not in them.

    ``other`` holds embeddings, norms, and anything that is not a Linear weight or its bias.
    ``source`` says where the shapes come from (a paper, a config file, or a live module).
    """

    name: str
    matrices: tuple[Matrix, ...]
    other: int = 0
    source: str = ""

    @property
    def total(self) -> int:
        """Every parameter of the model, as ``sum(p.numel() for p in model.parameters())``."""
        return sum(m.params for m in self.matrices) + self.other

    def select(self, targets) -> list[tuple[Matrix, int]]:
        """Each matrix that ``targets`` select, with how many of its ``count`` copies they hit.

        ``targets`` is a name, a compiled regex, or a list of them, matched as ``add_lora`` does
        (``minilora.targets``). A target that selects nothing is an error, never a silent zero.
        """
        names = [n for m in self.matrices for n in m.names()]
        chosen = set(select(names, targets, what=f"matrix of {self.name}"))
        hits = [(m, sum(n in chosen for n in m.names())) for m in self.matrices]
        return [(m, n) for m, n in hits if n]


def count_lora_parameters(shape: ModelShape, targets, r: int) -> tuple[int, int]:
    """(trainable, total) after LoRA of rank ``r`` on ``targets``, everything else frozen.

    The same pair ``minilora.count_parameters(add_lora(model, targets, r))`` counts on a real
    model: trainable is A and B of every adapted matrix; total is the base plus those.
    """
    _check_positive_int(r, "r (the LoRA rank)")
    trainable = sum(n * lora_params(m.d_out, m.d_in, r) for m, n in shape.select(targets))
    return trainable, shape.total + trainable


def describe(model, name: str | None = None) -> ModelShape:
    """Build a ``ModelShape`` from a real PyTorch module by reading its dense linear layers.

    The layers ``add_lora`` can adapt (``nn.Linear``, transformers' ``Conv1D``; see
    ``minilora.lora.base_features``). Linear layers with the same name (layer index replaced
    by ``*``), shape and bias become one ``Matrix`` with a count; every other parameter goes to
    ``other``. A parameter shared by two modules (tied weights) is counted once, as
    ``model.parameters()`` does. Limitation: two linear layers sharing one weight become a
    single matrix here, while ``add_lora`` would give each its own adapter.
    """
    from minilora.lora import base_features, is_packed  # torch, only when a model is read

    seen: set[int] = set()
    groups: dict[tuple[str, int, int, bool], list[str]] = {}
    for module_name, module in model.named_modules():
        features = base_features(module)
        if features is None or is_packed(module) or id(module.weight) in seen:
            continue
        seen.add(id(module.weight))
        has_bias = getattr(module, "bias", None) is not None
        if has_bias:
            seen.add(id(module.bias))
        key = (layer_pattern(module_name), features[1], features[0], has_bias)
        groups.setdefault(key, []).append(module_name)
    matrices = tuple(
        Matrix(pattern, d_out, d_in, len(names), bias, module_names=tuple(names))
        for (pattern, d_out, d_in, bias), names in groups.items()
    )
    other = sum(p.numel() for p in model.parameters() if id(p) not in seen)
    label = name or type(model).__name__
    return ModelShape(label, matrices, other, source=f"read from a live {type(model).__name__}")


# --- published architectures -----------------------------------------------------------------


def gpt3_shape(
    d_model: int = 12288, n_layers: int = 96, vocab: int = 50257, context: int = 2048
) -> ModelShape:
    """GPT-3 175B: Brown et al. 2020, Table 2.1 (96 layers, d_model 12,288, context 2,048).

    Layers as in GPT-2 (Radford et al. 2019), whose design GPT-3 keeps: learned token and position
    embeddings (vocabulary 50,257, the GPT-2 BPE), per layer q, k, v and output projections
    d×d and an MLP d → 4d → d, all with biases, two LayerNorms per layer and one at the end, and
    the output head tied to the token embedding. The paper does not list these details for GPT-3,
    so this count (174.6 B) is a reconstruction; it lands on the published "175B".
    """
    d, L = d_model, n_layers
    matrices = (
        Matrix("h.*.attn.q_proj", d, d, L, bias=True),
        Matrix("h.*.attn.k_proj", d, d, L, bias=True),
        Matrix("h.*.attn.v_proj", d, d, L, bias=True),
        Matrix("h.*.attn.o_proj", d, d, L, bias=True),
        Matrix("h.*.mlp.fc1", 4 * d, d, L, bias=True),
        Matrix("h.*.mlp.fc2", d, 4 * d, L, bias=True),
    )
    layer_norms = (2 * L + 1) * 2 * d  # weight and bias each
    other = vocab * d + context * d + layer_norms
    return ModelShape("GPT-3 175B", matrices, other, source="Brown et al. 2020, Table 2.1")


def llama_shape(
    name: str,
    d_model: int,
    n_layers: int,
    d_ffn: int,
    vocab: int = 32000,
    d_kv: int | None = None,
    source: str = "",
) -> ModelShape:
    """A LLaMA-style decoder, with the Hugging Face module names (q_proj, ..., down_proj).

    No biases; RMSNorm (one weight vector) before attention, before the MLP and at the end; a
    gated MLP (gate_proj, up_proj: d → d_ffn; down_proj: d_ffn → d); an untied output head.
    ``d_kv`` is the width of k_proj and v_proj: d_model with full multi-head attention, smaller
    with grouped-query attention (LLaMA-2 70B: 8 KV heads × 128 = 1,024).
    """
    d, L, f = d_model, n_layers, d_ffn
    kv = d if d_kv is None else d_kv
    matrices = (
        Matrix("layers.*.self_attn.q_proj", d, d, L),
        Matrix("layers.*.self_attn.k_proj", kv, d, L),
        Matrix("layers.*.self_attn.v_proj", kv, d, L),
        Matrix("layers.*.self_attn.o_proj", d, d, L),
        Matrix("layers.*.mlp.gate_proj", f, d, L),
        Matrix("layers.*.mlp.up_proj", f, d, L),
        Matrix("layers.*.mlp.down_proj", d, f, L),
        Matrix("lm_head", vocab, d, 1),
    )
    other = vocab * d + (2 * L + 1) * d  # token embedding, RMSNorm weights
    return ModelShape(name, matrices, other, source=source)


def bert_shape(
    name: str,
    hidden: int,
    n_layers: int,
    intermediate: int,
    vocab: int,
    positions: int = 512,
    token_types: int = 2,
    pooler: bool = True,
    source: str = "",
) -> ModelShape:
    """A BERT encoder with the Hugging Face ``BertModel`` module names (query, key, value, dense).

    Word, position and token-type embeddings; per layer q, k, v and output projections, an MLP
    hidden → intermediate → hidden, all with biases, and two LayerNorms; one LayerNorm after the
    embeddings; the pooler (one hidden×hidden Linear) if ``pooler``.
    """
    h, L = hidden, n_layers
    matrices = [
        Matrix("encoder.layer.*.attention.self.query", h, h, L, bias=True),
        Matrix("encoder.layer.*.attention.self.key", h, h, L, bias=True),
        Matrix("encoder.layer.*.attention.self.value", h, h, L, bias=True),
        Matrix("encoder.layer.*.attention.output.dense", h, h, L, bias=True),
        Matrix("encoder.layer.*.intermediate.dense", intermediate, h, L, bias=True),
        Matrix("encoder.layer.*.output.dense", h, intermediate, L, bias=True),
    ]
    if pooler:
        matrices.append(Matrix("pooler.dense", h, h, 1, bias=True))
    layer_norms = (2 * L + 1) * 2 * h
    other = (vocab + positions + token_types) * h + layer_norms
    return ModelShape(name, tuple(matrices), other, source=source)


GPT3_175B = gpt3_shape()
LLAMA_7B = llama_shape(
    "LLaMA 7B", 4096, 32, 11008, source="Touvron et al. 2023 (LLaMA), Table 2; d_ffn from config"
)
LLAMA_65B = llama_shape(
    "LLaMA 65B", 8192, 80, 22016, source="Touvron et al. 2023 (LLaMA), Table 2; d_ffn from config"
)
LLAMA2_70B = llama_shape(
    "LLaMA-2 70B",
    8192,
    80,
    28672,
    d_kv=8 * 128,
    source="Touvron et al. 2023 (Llama 2), GQA with 8 KV heads; shapes from the HF config",
)
MINILM_L6 = bert_shape(
    "all-MiniLM-L6-v2",
    hidden=384,
    n_layers=6,
    intermediate=1536,
    vocab=30522,
    source="config.json shipped with the checkpoint (BertModel, 6 layers, hidden 384)",
)
PUBLISHED = {s.name: s for s in (MINILM_L6, LLAMA_7B, LLAMA_65B, LLAMA2_70B, GPT3_175B)}


# --- memory ----------------------------------------------------------------------------------


def bytes_per_param(dtype: str) -> float:
    """Bytes one stored number takes: 4 for fp32, 2 for bf16, 0.5625 for NF4, ≈0.516 with DQ."""
    if dtype not in BITS_PER_PARAM:
        raise ValueError(f"unknown precision {dtype!r}; choose one of {sorted(BITS_PER_PARAM)}")
    return BITS_PER_PARAM[dtype] / 8


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes a training run holds for its parameters, part by part (activations not included).

    ``weights`` is the base model (trained in full fine-tuning, frozen in LoRA and QLoRA);
    ``master_weights`` an fp32 copy of the trained numbers kept by mixed-precision training;
    ``adapters`` the LoRA A and B; ``gradients`` and ``optimizer_state`` exist only for what
    trains.
    """

    method: str
    trainable: int
    weights: float
    master_weights: float
    adapters: float
    gradients: float
    optimizer_state: float

    PARTS = ("weights", "master_weights", "adapters", "gradients", "optimizer_state")

    @property
    def total(self) -> float:
        """All parts added up, in bytes."""
        return sum(getattr(self, part) for part in self.PARTS)

    def to_table(self) -> str:
        """A small text table, one row per part, with units."""
        return memory_table([self])

    def __str__(self) -> str:
        return self.to_table()


def estimate_memory(
    method: str,
    n_params: int,
    n_lora: int = 0,
    *,
    weights: str | None = None,
    adapters: str = "bf16",
    gradients: str | None = None,
    optimizer: str = "adam",
    optimizer_dtype: str = "fp32",
    master_copy: bool = False,
) -> MemoryBreakdown:
    """Bytes of parameters, gradients and optimizer state to train a model of ``n_params``.

    ``method``: ``"full"`` trains all ``n_params``; ``"lora"`` and ``"qlora"`` freeze them and
    train ``n_lora`` adapter numbers. ``weights`` is the base's precision (default bf16, or
    ``"nf4+dq"`` for QLoRA); ``adapters`` the adapters'; ``gradients`` defaults to the precision
    of what trains; ``optimizer`` is ``"adam"``, ``"sgd-momentum"`` or ``"sgd"`` with its state in
    ``optimizer_dtype``; ``master_copy`` adds an fp32 copy of the trained numbers (mixed
    precision). Full fine-tuning in bf16 with fp32 Adam and a master copy is 2+4+2+8 = 16 bytes
    per parameter (ZeRO, Rajbhandari et al. 2019, §3.1). Every one of the ``n_params`` is stored
    in ``weights``; real QLoRA keeps embeddings, norms and the output head in 16 bits, which adds
    a little (chapter 03 works out how much for LLaMA 65B).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if isinstance(n_params, bool) or not isinstance(n_params, int) or n_params < 1:
        raise ValueError(f"n_params must be a positive integer, got {n_params!r}")
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {list(OPTIMIZER_STATES)}")
    if weights is None:
        weights = "nf4+dq" if method == "qlora" else "bf16"
    if method == "full":
        if n_lora:
            raise ValueError("full fine-tuning trains the weights themselves: pass n_lora=0")
        if weights in QUANTIZED:
            raise ValueError(f"{weights} weights cannot be trained directly; use method='qlora'")
        trained, trained_dtype = n_params, weights
    else:
        if isinstance(n_lora, bool) or not isinstance(n_lora, int) or n_lora < 1:
            raise ValueError(
                f"{method} needs n_lora, the adapters' parameter count, got {n_lora!r}"
            )
        if method == "qlora" and weights not in QUANTIZED:
            raise ValueError(f"QLoRA keeps the base in 4 bits: weights must be one of {QUANTIZED}")
        if method == "lora" and weights in QUANTIZED:
            raise ValueError("a 4-bit base with adapters is QLoRA: use method='qlora'")
        trained, trained_dtype = n_lora, adapters
    gradients = trained_dtype if gradients is None else gradients
    return MemoryBreakdown(
        method=method,
        trainable=trained,
        weights=n_params * bytes_per_param(weights),
        master_weights=trained * bytes_per_param("fp32") if master_copy else 0.0,
        adapters=0.0 if method == "full" else n_lora * bytes_per_param(adapters),
        gradients=trained * bytes_per_param(gradients),
        optimizer_state=trained * OPTIMIZER_STATES[optimizer] * bytes_per_param(optimizer_dtype),
    )


def compare_memory(shape: ModelShape, targets, r: int) -> list[MemoryBreakdown]:
    """Full fine-tuning (16 bytes/param), LoRA (bf16 base) and QLoRA (NF4+DQ base) for one model.

    The recipes the papers use: full fine-tuning as mixed-precision Adam with an fp32 master copy;
    LoRA and QLoRA with bf16 adapters and gradients and fp32 Adam moments.
    """
    n_lora, _ = count_lora_parameters(shape, targets, r)
    return [
        estimate_memory("full", shape.total, master_copy=True),
        estimate_memory("lora", shape.total, n_lora),
        estimate_memory("qlora", shape.total, n_lora),
    ]


# --- printing --------------------------------------------------------------------------------


def format_bytes(n: float) -> str:
    """``560e9`` → ``"560 GB"``, ``37748736`` → ``"37.7 MB"``: decimal units, 3 significant digits.

    Zero prints as ``"-"`` so a table's empty parts stand out.
    """
    if n < 0:
        raise ValueError(f"a size in bytes cannot be negative, got {n}")
    if n == 0:
        return "-"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return _three_digits(n / size) + " " + unit
    return f"{n:.0f} B"


def format_count(n: float) -> str:
    """``65536`` → ``"65,536"``, ``18874368`` → ``"18.9M"``, ``6.74e9`` → ``"6.74B"``."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6)):
        if abs(n) >= size:
            return _three_digits(n / size) + unit
    return f"{n:,.0f}"


def _three_digits(x: float) -> str:
    # 3 significant digits without scientific notation: 560, 37.7, 8.39 (1000 stays "1000").
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def memory_table(breakdowns: list[MemoryBreakdown]) -> str:
    """Side-by-side text table of several breakdowns (one column per method)."""
    labels = {
        "weights": "weights (base)",
        "master_weights": "fp32 master copy",
        "adapters": "LoRA adapters",
        "gradients": "gradients",
        "optimizer_state": "optimizer state",
    }
    width = 12
    lines = ["".ljust(20) + "".join(b.method.rjust(width) for b in breakdowns)]
    counts = "".join(format_count(b.trainable).rjust(width) for b in breakdowns)
    lines.append("trainable params".ljust(20) + counts)
    for part in MemoryBreakdown.PARTS:
        cells = "".join(format_bytes(getattr(b, part)).rjust(width) for b in breakdowns)
        lines.append(labels[part].ljust(20) + cells)
    lines.append(
        "total".ljust(20) + "".join(format_bytes(b.total).rjust(width) for b in breakdowns)
    )
    lines.append("(activations not counted: they depend on batch and sequence length)")
    return "\n".join(lines)
