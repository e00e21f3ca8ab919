"""The numerics-perturbation harness (`make robust`): every chapter again, on "another CPU".

Float rounding differs between machines (BLAS code paths, vector kernels), and so does a
chapter's every trained number. A chapter's conclusions must survive that, and other seeds. Each
notebook is re-executed under nbval (``--nbval-lax``: every cell must run, every assert hold)
three more times:

- ``mkl``: ``MKL_ENABLE_INSTRUCTIONS=SSE4_2``, another BLAS code path on any x86 CPU (a plain
  257×513 @ 513×129 matmul already differs in its last bits); ``# NBVAL_CHECK_OUTPUT`` cells are
  compared too (they must print only what is identical on every CPU);
- ``aten``: ``ATEN_CPU_CAPABILITY=default``, PyTorch's non-vectorized kernels; outputs compared;
- ``seed``: another ``SEED``: the ``parameters`` cell run again right after itself with its
  ``SEED = ...`` line changed (papermill-style, but what the cell derives from SEED moves too),
  in a copy under ``test-output/robust/``; outputs are not compared (they may depend on the
  seed), asserts must hold.

One pytest session per perturbation runs two notebooks at a time (the machine has two cores;
every chapter uses one thread). The report (printed, and written to
``test-output/robust/report.md``) is a table chapter × perturbation → pass/fail and seconds, then
every claim a chapter made with ``minilora.lab.race.claim``: its value on each run and the
smallest margin it left.

    python .ci/robust.py                  # everything (what CI runs after make test)
    python .ci/robust.py --only 07 09     # some chapters
    python .ci/robust.py --seed 3 --perturbations seed
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "test-output" / "robust"
PERTURBATIONS = {
    "mkl": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "aten": {"ATEN_CPU_CAPABILITY": "default"},
    "seed": {},
}


def seeded_copy(notebook: Path, seed: int) -> Path:
    """A copy of ``notebook`` whose parameters cell is run again with ``SEED = seed`` after it.

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
    # The parameters cell runs again with the new SEED, so that what it derives from SEED in
    # the same cell (``SEEDS = (SEED, SEED + 1, SEED + 2)``) moves with it; a bare
    # ``SEED = 7`` after the cell would leave such values at the committed seed, silently.
    params = "".join(cells[where[0]]["source"])
    source, found = re.subn(r"^SEED\s*=\s*\d+", f"SEED = {seed}", params, flags=re.M)
    if found != 1:
        raise SystemExit(f"{notebook.name}: its parameters cell needs one line 'SEED = <int>'")
    injected = {
        "cell_type": "code",
        "execution_count": None,
        "metadata": {"tags": ["injected-parameters"]},
        "outputs": [],
        "source": f"# injected by .ci/robust.py: the parameters cell with SEED = {seed}\n{source}",
    }
    if "id" in cells[0]:
        injected["id"] = "injected-parameters"
    cells.insert(where[0] + 1, injected)
    path = OUT / f"seed-{seed}" / notebook.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


def run(pert: str, paths: list[Path], workers: int) -> list[dict]:
    """One pytest session over ``paths`` under one perturbation; per-chapter outcome and seconds.

    pytest-xdist runs ``workers`` notebooks at a time (``--dist loadscope`` keeps a notebook's
    cells on one worker); the junit report gives every cell's outcome and time.
    """
    env = dict(os.environ, **PERTURBATIONS[pert])
    env["MINILORA_CLAIMS"] = str(OUT / f"claims-{pert}.jsonl")
    env["MINILORA_ROBUST"] = pert  # conftest.py: don't record these times as the chapters' own
    junit = OUT / f"junit-{pert}.xml"
    log = OUT / f"{pert}.log"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "--nbval-lax",
        *map(str, paths),
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        "-o",
        "junit_family=xunit1",
    ]
    if workers > 1:
        cmd += ["-n", str(workers), "--dist", "loadscope"]  # fmt: skip
    print(f"  {pert}: {' '.join(f'{k}={v}' for k, v in PERTURBATIONS[pert].items()) or 'SEED'}"
          f" ... ", end="", flush=True)  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    print(f"{time.perf_counter() - start:.0f} s, exit {proc.returncode}", flush=True)
    log.write_text(proc.stdout + proc.stderr, encoding="utf-8")
    per_chapter: dict[str, dict] = {
        p.stem: {"ok": False, "seconds": 0.0, "cells": 0} for p in paths
    }
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            chapter = Path(case.get("file", "")).stem
            if chapter not in per_chapter:
                continue
            entry = per_chapter[chapter]
            entry["seconds"] += float(case.get("time", 0))
            entry["cells"] += 1
            failed = any(child.tag in ("failure", "error") for child in case)
            entry.setdefault("failed", []).append(case.get("name")) if failed else None
    results = []
    for chapter, entry in per_chapter.items():
        ok = entry["cells"] > 0 and not entry.get("failed")
        results.append({"chapter": chapter, "pert": pert, "ok": ok, "seconds": entry["seconds"],
                        "failed": entry.get("failed", []), "log": log})  # fmt: skip
    return results


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
    start = time.perf_counter()
    print(f"make robust: {len(notebooks)} chapters × {args.perturbations}, {args.workers} "
          f"notebooks at a time, seed run with SEED={args.seed}", flush=True)  # fmt: skip
    results = []
    for pert in args.perturbations:
        paths = [seeded_copy(nb, args.seed) for nb in notebooks] if pert == "seed" else notebooks
        results += run(pert, paths, args.workers)
    text = report(results, args.perturbations)
    text += f"\nWall time: {time.perf_counter() - start:.0f} s with {args.workers} workers.\n"
    (OUT / "report.md").write_text(text, encoding="utf-8")
    print("\n" + text)
    failed = [r for r in results if not r["ok"]]
    for r in failed:
        print(f"FAILED: {r['chapter']} under {r['pert']}: {', '.join(r['failed']) or 'no cell ran'}"
              f" (pytest output in {r['log'].relative_to(ROOT)})")  # fmt: skip
    for log in sorted({r["log"] for r in failed}):
        tail = log.read_text(encoding="utf-8").splitlines()[-80:]
        print(f"\n===== end of {log.relative_to(ROOT)}:\n" + "\n".join(tail))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
