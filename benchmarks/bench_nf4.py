"""NF4 speed: minilora's quantize/dequantize against bitsandbytes' on the CPU, 4096 × 4096 fp32.

Four comparisons, each timed side by side in interleaved rounds (``benchmarks.timing``):
quantize and dequantize, without and with double quantization. bitsandbytes is the reference
(ratio 1); a ratio above 1 means minilora is slower. Before timing, the outputs are checked to
agree: codes byte-identical without double quantization, dequantized weights equal.

Run alone with ``python -m benchmarks.bench_nf4``; ``benchmarks/run.py`` calls ``run()``.
"""

from __future__ import annotations

import torch

from benchmarks.timing import fix_threads, ratio_rows, time_rounds
from minilora.nf4 import dequantize_nf4, quantize_nf4

SIZE = 4096


def _bnb():
    import bitsandbytes.functional as bnbf

    return bnbf


def run(size: int = SIZE, repeats: int = 7, threads: int | None = None) -> list[dict]:
    """Rows (dicts, see ``timing.ratio_rows``) for quantize and dequantize, with and without DQ."""
    if threads is not None:
        fix_threads(threads)
    bnbf = _bnb()
    w = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    n = w.numel()
    rows = []
    for dq in (False, True):
        tag = "double quant" if dq else "fp32 absmax"
        ours = quantize_nf4(w, 64, dq)
        packed, state = bnbf.quantize_4bit(
            w, blocksize=64, quant_type="nf4", compress_statistics=dq
        )
        if not torch.equal(ours.codes, packed.reshape(-1)):
            raise AssertionError("minilora and bitsandbytes codes differ; not timing")
        if not dq and not torch.equal(
            dequantize_nf4(ours), bnbf.dequantize_4bit(packed, state, quant_type="nf4")
        ):
            raise AssertionError("dequantized weights differ; not timing")
        quantize = {
            "minilora": lambda dq=dq: quantize_nf4(w, 64, dq),
            "bitsandbytes": lambda dq=dq: bnbf.quantize_4bit(
                w, blocksize=64, quant_type="nf4", compress_statistics=dq
            ),
        }
        dequantize = {
            "minilora": lambda q=ours: dequantize_nf4(q),
            "bitsandbytes": lambda p=packed, s=state: bnbf.dequantize_4bit(p, s, quant_type="nf4"),
        }
        for verb, fns in (("quantize", quantize), ("dequantize", dequantize)):
            rounds = time_rounds(fns, repeats=repeats, warmup=1)
            group = f"NF4 {verb} {size}×{size} ({tag})"
            for row in ratio_rows(group, rounds, reference="bitsandbytes"):
                row["note"] = f"{n / row['seconds'] / 1e6:.0f} M weights/s"
                rows.append(row)
    return rows


def main() -> None:
    threads = fix_threads(torch.get_num_threads())
    print(f"torch threads: {threads}")
    for row in run():
        print(
            f"{row['group']:45s} {row['case']:13s} {row['seconds'] * 1e3:8.1f} ms "
            f"ratio {row['ratio']:5.2f} vs {row['vs']}  ({row['note']})"
        )


if __name__ == "__main__":
    main()
