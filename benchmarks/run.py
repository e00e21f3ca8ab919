"""``make bench``: run every benchmark group and write ``benchmarks/results.md``.

    python -m benchmarks.run                 # the full run (a few minutes on 2 cores)
    python -m benchmarks.run --quick         # fewer repeats, no peak-RSS subprocesses
    python -m benchmarks.run --threads 2 --out /tmp/results.md

Every speed figure is a ratio of two medians measured side by side in this one process (see
``benchmarks/timing.py``); absolute times are printed for orientation only. The header records
the machine, the versions, the thread count, the date and the load average, because a ratio
measured on a busy machine is noisier than one measured on an idle machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOTEBOOK_SECONDS = ROOT / "test-output" / "notebook_seconds.json"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (1)")
    parser.add_argument("--repeats", type=int, default=6, help="timed rounds per group (6)")
    parser.add_argument("--quick", action="store_true", help="2 rounds, no peak-RSS processes")
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# The machine and the software
# ----------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("torch", "numpy", "peft", "bitsandbytes", "transformers", "minilora"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def blas_threads() -> str:
    """What numpy's BLAS will use (threadpoolctl, if present, reads it from the library)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return os.environ.get("OPENBLAS_NUM_THREADS", "?")
    counts = {f"{i['internal_api']} {i['num_threads']}" for i in threadpool_info()}
    return ", ".join(sorted(counts))


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------
def fmt_seconds(s: float) -> str:
    return f"{s * 1e3:,.1f} ms" if s < 10 else f"{s:,.1f} s"


def speed_tables(rows: list[dict]) -> list[str]:
    """One table per group: case, median time, ratio to the group's reference, note."""
    lines = []
    groups = list(dict.fromkeys(r["group"] for r in rows))
    for group in groups:
        mine = [r for r in rows if r["group"] == group]
        how = mine[0].get("how", "median of per-round ratios")
        lines += [f"#### {group}", "", f"Ratio = time / time of **{mine[0]['vs']}** ({how}).", ""]
        lines += ["| case | time | ratio | note |", "|---|---:|---:|---|"]
        for r in mine:
            lines.append(
                f"| {r['case']} | {fmt_seconds(r['seconds'])} | {r['ratio']:.3f} | {r['note']} |"
            )
        lines.append("")
    return lines


def mb(n: float) -> str:
    return f"{n / 1e6:,.2f}"


def memory_tables(rows: list[dict], nf4_limit: float) -> list[str]:
    lines = []
    for base in dict.fromkeys(r["base"] for r in rows):
        mine = [r for r in rows if r["base"] == base]
        full = mine[0]
        has_rss = "peak_mib" in full
        head = "| method | trainable | weights MB | grads MB | Adam MB | kept MB | saved MB |"
        rule = "|---|---:|---:|---:|---:|---:|---:|"
        if has_rss:
            head += " peak RSS MiB | peak / full FT |"
            rule += "---:|---:|"
        lines += [f"#### {base}", "", head, rule]
        for r in mine:
            line = (
                f"| {r['method']} | {r['trainable']:,} | {mb(r['weights'])} | {mb(r['grads'])} | "
                f"{mb(r['adam'])} | {mb(r['kept'])} | {mb(r['saved'])} |"
            )
            if has_rss:
                line += f" {r['peak_mib']:,.1f} | {r['peak_mib'] / full['peak_mib']:.3f} |"
            lines.append(line)
        q = next((r for r in mine if r["bits_4bit"]), None)
        if q:
            lines += [
                "",
                f"Stored 4-bit weights: {q['n_4bit']:,} weights at **{q['bits_4bit']:.4f} bits "
                f"per weight** (limit {nf4_limit:.4f}; ratio {q['bits_4bit'] / nf4_limit:.4f}). "
                f"Kept-memory ratios to full fine-tuning: "
                + ", ".join(f"{r['method']} {r['kept'] / full['kept']:.3f}" for r in mine[1:])
                + ".",
            ]
        lines.append("")
    return lines


def notebook_table() -> list[str]:
    if not NOTEBOOK_SECONDS.exists():
        return [
            "No record yet: `test-output/notebook_seconds.json` is written by the root "
            "`conftest.py` at the end of a `make test` (or any pytest run over `notebooks/`). "
            "`make bench` does not re-run the notebooks.",
            "",
        ]
    seconds = json.loads(NOTEBOOK_SECONDS.read_text())
    when = dt.datetime.fromtimestamp(NOTEBOOK_SECONDS.stat().st_mtime, dt.UTC)
    lines = [
        f"From `test-output/notebook_seconds.json`, written {when:%Y-%m-%d %H:%M} UTC by the last "
        "pytest run over the notebooks (summed nbval cell times; `make bench` does not re-run "
        "them). Machine load at that time is not recorded.",
        "",
        "| chapter | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {Path(name).name} | {s:.1f} |" for name, s in seconds.items()]
    lines += [f"| **all listed** | **{sum(seconds.values()):.1f}** |", ""]
    timed = {Path(name).name for name in seconds}
    missing = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb") if p.name not in timed)
    if missing:
        lines += [
            "Not in that run (run `make test` for the whole suite): " + ", ".join(missing) + ".",
            "",
        ]
    return lines


def trailing(rows: list[dict]) -> list[str]:
    """Groups where a minilora case is more than 10 % slower than a peer (PEFT, bitsandbytes)."""
    found = []
    for group in dict.fromkeys(r["group"] for r in rows):
        mine = [r for r in rows if r["group"] == group]
        ours = [r for r in mine if r["case"].startswith("minilora")]
        peers = [r for r in mine if r["case"].split()[0] in ("PEFT", "bitsandbytes", "PyTorch")]
        for o in ours:
            for p in peers:
                if o["ratio"] > 1.10 * p["ratio"]:
                    found.append(
                        f"- {group}: {o['case']} takes {o['ratio'] / p['ratio']:.2f}× the time of "
                        f"{p['case']}."
                    )
    return found or ["- none: in every group minilora is within 10 % of its peer or faster."]


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
# What the code does to be fast, and what each choice costs a reader. Facts about the code as it
# is (no measured numbers: those are in the tables); edit when minilora changes.
SPEED_NOTES = [
    "- `LoRALinear.forward` multiplies by A, then by B (two thin matmuls) and never forms the "
    "d × k matrix B·A: the point of LoRA, at no cost in clarity. What remains above the FLOP "
    "limit (see the profile table) sits in the thin rank-r matmuls, which are memory-bound (each "
    "reads a whole tokens × 4096 matrix for r multiply-adds per element), and in element-wise "
    "work (the scaling, the residual add, the sum of the two dx paths); PEFT's layer runs the "
    "same operations and pays the same.",
    "- `dequantize_nf4` looks each packed byte up in a 256-row table of code pairs "
    "(`NF4_BYTE_PAIRS`) instead of splitting it into two nibbles and looking each up: one gather "
    "instead of shift, mask, stack and gather. The table is gathered through an int64 view "
    "(each row's two float32s as one 8-byte element): PyTorch's CPU gather moves one 8-byte "
    "element per byte faster than a 2-wide float row, and copies the same bits. Cost: one more "
    "table, built in one line from the 16 NF4 values, and a view to explain.",
    "- `Linear4bit` computes through `_MatmulNF4`, a small autograd Function that keeps only the "
    "packed weight for backward and dequantizes it again there, as bitsandbytes does: compute "
    "traded for the memory QLoRA exists to save. Cost: the package's one custom autograd "
    "Function.",
    "- Where minilora still trails: dequantizing (and so `Linear4bit`) against bitsandbytes' "
    "C++ kernel, which reads each byte and writes each float once. Pure PyTorch makes separate "
    "passes over memory (the codes converted to int, a gather into a new tensor, the per-block "
    "multiply into another); closing the gap fully would take a compiled kernel, which the "
    "course does not teach.",
]


def main(argv=None) -> None:
    args = parse_args(argv)
    # BLAS reads its thread count when numpy is first imported: set it before anything does.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    import warnings

    warnings.filterwarnings("ignore")  # library deprecation chatter; the tables are the output

    from benchmarks import bench_lora, bench_memory, bench_nf4, bench_numpy
    from benchmarks.timing import fix_threads

    threads = fix_threads(args.threads)
    repeats = 2 if args.quick else args.repeats
    started = time.time()
    load_before = os.getloadavg()
    speed: list[dict] = []
    stages = [
        ("LoRA layer", lambda: bench_lora.run(repeats)),
        ("LoRA step profile", bench_lora.run_breakdown),
        ("NumPy step", lambda: bench_numpy.run(3 * repeats)),
        ("NF4", lambda: bench_nf4.run(repeats=repeats)),
        ("4-bit layer", lambda: bench_lora.run_linear4bit(repeats)),
    ]
    for name, stage in stages:
        t0 = time.time()
        speed += stage()
        print(f"{name}: {time.time() - t0:.0f} s", flush=True)
    t0 = time.time()
    memory = bench_memory.run(threads, rss=not args.quick)
    print(f"memory: {time.time() - t0:.0f} s", flush=True)
    load_after = os.getloadavg()
    elapsed = time.time() - started

    v = versions()
    now = dt.datetime.now(dt.UTC)
    # The load after the run includes this run's own thread; the load before is the others'.
    busy = load_before[0] > 0.5 * (os.cpu_count() or 1)
    lines = [
        "# minilora benchmarks",
        "",
        "Written by `make bench` (`python -m benchmarks.run`); do not edit by hand. Each time is "
        "the median of interleaved rounds (every case once per round, order rotated), each "
        "ratio the median of per-round ratios to the group's reference, all in one process.",
        "",
        f"- Date: {now:%Y-%m-%d %H:%M} UTC; whole run {elapsed:.0f} s"
        + (" (`--quick`)" if args.quick else ""),
        f"- Machine: {cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} "
        f"{platform.release()}",
        f"- Threads: torch {threads}; numpy BLAS {blas_threads()}",
        f"- Rounds: {repeats} timed (+1 warm-up) per group; {3 * repeats} (+2) for the NumPy step",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- Load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        "(after includes this run)",
    ]
    if busy:
        lines.append(
            "- **Caveat:** the machine was busy with other jobs when this run started (load "
            "average above half the core count), so single times are noisy; ratios of cases "
            "measured in the same round are more trustworthy than the absolute times, and "
            "differences of a few per cent are within the noise."
        )
    lines += ["", "## Speed", ""]
    lines += speed_tables(speed)
    lines += ["### Where minilora trails a peer (more than 10 % slower)", ""]
    lines += trailing(speed) + [""]
    lines += ["### What makes it fast, and what that costs in clarity", ""] + SPEED_NOTES + [""]
    lines += [
        "## Memory of one training step",
        "",
        "Forward, loss, backward, Adam step; LoRA r = 8 on every linear layer of the blocks "
        "(QLoRA: those layers stored in NF4 + double quantization). Tensor bytes (exact): "
        "*weights* as stored, *grads*, *Adam* state, *kept* = their sum (held from one step "
        "to the next), *saved* = activations autograd kept for backward (weights excluded). "
        "Peak RSS: a fresh process per row, peak resident memory during the step minus the "
        "resident memory before the model was built (fixed glibc mmap threshold; see "
        "`bench_memory.py`). MB = 10⁶ bytes, MiB = 2²⁰ bytes.",
        "",
    ]
    lines += memory_tables(memory, bench_memory.NF4_DQ_LIMIT)
    lines += ["## Notebook suite: seconds per chapter under nbval", ""]
    lines += notebook_table()
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out} in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
