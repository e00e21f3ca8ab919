"""The course's helpers: one call that makes a notebook deterministic, and one palette.

Each chapter starts with ``setup(seed)``. It seeds Python, NumPy and PyTorch, fixes the number of
threads (float sums depend on how work is split across threads, so a fixed count keeps
``# NBVAL_CHECK_OUTPUT`` cells identical run to run), and sets a small, readable plot style.

Methods keep one colour in every plot of the course: ``COLORS["lora"]`` is always LoRA, etc.

Also here: ``minilora.course.widgets`` (the slider plumbing every interactive cell uses) and
``minilora.course.checkers`` (the homework checkers, ``ExerciseError`` on a mistake).
"""

from __future__ import annotations

import os
import random

import numpy as np

# One colour per method, for every plot in the course (colour-blind safe, Okabe-Ito).
COLORS = {
    "base": "#7f7f7f",  # the frozen, pretrained model
    "full": "#D55E00",  # full fine-tuning
    "lora": "#0072B2",  # LoRA
    "qlora": "#009E73",  # LoRA on a 4-bit NF4 base
    "theory": "#000000",  # a curve predicted by arithmetic or a theorem
    "other": "#CC79A7",  # anything else (a baseline, an alternative)
}


def setup(seed: int = 0, threads: int = 1) -> None:
    """Seed everything and fix the thread count, so a chapter computes the same numbers each run."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    random.seed(seed)
    np.random.seed(seed)
    try:  # NumPy's BLAS threads: results of large matmuls can depend on them
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        pass
    try:
        import torch

        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
    except ImportError:  # pragma: no cover - NumPy-only chapters still work
        pass
    import matplotlib as mpl

    mpl.rcParams.update(
        {
            "figure.figsize": (6.4, 3.6),
            "figure.dpi": 90,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.frameon": False,
        }
    )
