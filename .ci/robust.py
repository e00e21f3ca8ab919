"""The numerics-perturbation harness (`make robust`): every chapter again, on "another CPU".

Float rounding differs between machines (BLAS code paths, vector kernels), and so does a
chapter's every trained number. A chapter's conclusions must survive that, and other seeds. Each
notebook is re-executed under nbval (``--nbval-lax``: every cell must run, every assert hold)
three more times:

- ``mkl``: ``MKL_ENABLE_INSTRUCTIONS=SSE4_2``, another BLAS code path on any x86 CPU (a plain
  257×513 @ 513×129 matmul already differs in its last bits); ``# NBVAL_CHECK_OUTPUT`` cells are
  compared too (they must print only what is identical on every CPU);
- ``aten``: ``ATEN_CPU_CAPABILITY=default``, PyTorch's non-vectorized kernels; outputs compared;
- ``seed``: another ``SEED`` injected after the ``parameters`` cell (papermill-style) into a copy
  under ``test-output/robust/``; outputs are not compared (they may depend on the seed), asserts
  must hold.

Two notebooks run at a time (the machine has two cores; every chapter uses one thread). The
report (printed and written to ``test-output/robust/report.md``) is a table chapter ×
perturbation → pass/fail and seconds, then every claim a chapter made with
``minilora.lab.race.claim``: its value on each run and the smallest margin it left.

    python .ci/robust.py                  # everything (what CI runs after make test)
    python .ci/robust.py --only 07 09     # some chapters
    python .ci/robust.py --seed 3 --perturbations seed
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "test-output" / "robust"
PERTURBATIONS = {
    "mkl": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "aten": {"ATEN_CPU_CAPABILITY": "default"},
    "seed": {},
}


def seeded_copy(notebook: Path, seed: int) -> Path:
    """A copy of ``notebook`` with ``SEED = seed`` injected after its parameters cell.

    The copy drops the ``# NBVAL_CHECK_OUTPUT`` markers: with another seed only the asserts count.
    """
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    cells = nb["cells"]
    where = [
        i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])
    ]
    if len(where) != 1:
        raise SystemExit(f"{notebook.name}: needs exactly one cell tagged 'parameters'")
    for cell in cells:
        if cell["cell_type"] == "code":
            lines = "".join(cell["source"]).split("\n")
            cell["source"] = "\n".join(x for x in lines if x.strip() != "# NBVAL_CHECK_OUTPUT")
    injected = {
        "cell_type": "code",
        "execution_count": None,
        "metadata": {"tags": ["injected-parameters"]},
        "outputs": [],
        "source": f"SEED = {seed}  # injected by .ci/robust.py (papermill-style)",
    }
    if "id" in cells[0]:
        injected["id"] = "injected-parameters"
    cells.insert(where[0] + 1, injected)
    path = OUT / f"seed-{seed}" / notebook.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


def run(job: tuple[str, str, Path], log_dir: Path) -> dict:
    """Run one notebook under one perturbation; return its outcome and seconds."""
    chapter, pert, path = job
    env = dict(os.environ, **PERTURBATIONS[pert])
    env["MINILORA_CLAIMS"] = str(OUT / f"claims-{pert}.jsonl")
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", str(path), "-q", "-p", "no:cacheprovider"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    log = log_dir / f"{chapter}-{pert}.log"
    log.write_text(proc.stdout + proc.stderr, encoding="utf-8")
    return {"chapter": chapter, "pert": pert, "ok": proc.returncode == 0, "seconds": seconds,
            "log": log}  # fmt: skip


def load_claims(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def report(results: list[dict], perts: list[str]) -> str:
    chapters = sorted({r["chapter"] for r in results})
    cell = {(r["chapter"], r["pert"]): r for r in results}
    lines = ["## Chapters under perturbation", "", "| chapter | " + " | ".join(perts) + " |",
             "|---|" + "---|" * len(perts)]  # fmt: skip
    for ch in chapters:
        row = []
        for p in perts:
            r = cell.get((ch, p))
            row.append("" if r is None else f"{'pass' if r['ok'] else 'FAIL'} {r['seconds']:.0f} s")
        lines.append(f"| {ch} | " + " | ".join(row) + " |")
    # claims: the base run of `make test` (if recorded) beside every perturbation
    runs = {"test": load_claims(ROOT / "test-output" / "claims" / "test.jsonl")}
    runs.update({p: load_claims(OUT / f"claims-{p}.jsonl") for p in perts})
    table: dict[tuple[str, str], dict] = {}
    for label, records in runs.items():
        for rec in records:
            if rec["notebook"] not in chapters:
                continue
            entry = table.setdefault((rec["notebook"], rec["claim"]), {"op": rec["op"]})
            entry[label] = rec
    if table:
        labels = [label for label in runs if runs[label]]
        lines += ["", "## Claims (value on each run; bound; smallest margin)", "",
                  "| chapter | claim | " + " | ".join(labels) + " | bound | min margin |",
                  "|---|---|" + "---|" * (len(labels) + 2)]  # fmt: skip
        for (ch, name), entry in sorted(table.items()):
            recs = [entry[label] for label in labels if label in entry]
            values = [f"{entry[label]['value']:.4g}" if label in entry else "" for label in labels]
            margin = min(r["margin"] for r in recs)
            bound = f"{entry['op']} {recs[0]['bound']:.4g}"
            lines.append(
                f"| {ch} | {name} | " + " | ".join(values) + f" | {bound} | {margin:.4g} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="chapter numbers or names (default: all)")
    parser.add_argument("--perturbations", nargs="*", default=list(PERTURBATIONS))
    parser.add_argument("--seed", type=int, default=7, help="the SEED of the 'seed' run")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    unknown = set(args.perturbations) - set(PERTURBATIONS)
    if unknown:
        parser.error(f"unknown perturbations {sorted(unknown)}; choose from {list(PERTURBATIONS)}")
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.only:
        notebooks = [nb for nb in notebooks if any(nb.stem.startswith(o) for o in args.only)]
    OUT.mkdir(parents=True, exist_ok=True)
    for p in args.perturbations:
        (OUT / f"claims-{p}.jsonl").unlink(missing_ok=True)
    log_dir = OUT / "logs"
    log_dir.mkdir(exist_ok=True)
    jobs = []
    for nb in notebooks:
        for pert in args.perturbations:
            path = seeded_copy(nb, args.seed) if pert == "seed" else nb
            jobs.append((nb.stem, pert, path))
    # longest chapters first (last known times), so the two workers finish together
    known = ROOT / "test-output" / "notebook_seconds.json"
    seconds = json.loads(known.read_text()) if known.exists() else {}
    jobs.sort(key=lambda j: -seconds.get(f"notebooks/{j[0]}.ipynb", 0.0))
    start = time.perf_counter()
    print(f"make robust: {len(jobs)} runs ({len(notebooks)} chapters × {args.perturbations}), "
          f"{args.workers} at a time, seed run with SEED={args.seed}", flush=True)  # fmt: skip
    results = []
    with ThreadPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run, job, log_dir) for job in jobs]
        for future in as_completed(futures):
            r = future.result()
            results.append(r)
            print(f"  {r['chapter']:<32} {r['pert']:<5} {'pass' if r['ok'] else 'FAIL'} "
                  f"{r['seconds']:6.1f} s", flush=True)  # fmt: skip
    text = report(results, args.perturbations)
    text += f"\nWall time: {time.perf_counter() - start:.0f} s with {args.workers} workers.\n"
    (OUT / "report.md").write_text(text, encoding="utf-8")
    print("\n" + text)
    failed = [r for r in results if not r["ok"]]
    for r in failed:
        tail = r["log"].read_text(encoding="utf-8").splitlines()[-60:]
        print(f"\n===== {r['chapter']} under {r['pert']} failed; end of {r['log']}:")
        print("\n".join(tail))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
