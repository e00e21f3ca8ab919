"""Write the text corpora of chapters 07-08 into minilora/lab/corpora/ (run once, then commit).

The documents come from the running interpreter: English prose from ``pydoc_data.topics`` (the
language reference ``help("if")`` prints) and Python code from a fixed list of standard-library
modules. Another Python version ships other text, so the snapshot is what the package reads;
this script only says how it was made (the shipped one with Python 3.11.7)::

    python data/make_corpora.py

Each output file is JSON Lines, one document per line: ``{"name": ..., "text": ...}``.
"""

import json
import platform
import sysconfig
from pathlib import Path
from pydoc_data.topics import topics

OUT = Path(__file__).resolve().parents[1] / "minilora" / "lab" / "corpora"
CODE_TRAIN_MODULES = (
    "textwrap", "string", "random", "fractions", "heapq", "functools", "json/encoder",
    "json/decoder", "dataclasses", "statistics", "csv", "pprint", "shlex", "queue",
    "contextlib", "copy", "calendar", "glob", "fnmatch", "graphlib",
)  # fmt: skip
CODE_VAL_MODULES = ("bisect", "colorsys", "numbers", "operator", "abc", "keyword", "tokenize")
MAX_CHARS_PER_FILE = 16_000  # each module cut to its first 16,000 characters
PROSE_VAL_EVERY = 10  # every 10th documentation topic (in sorted order) is held out


def prose() -> dict[str, list[tuple[str, str]]]:
    splits = {"train": [], "val": []}
    for i, name in enumerate(sorted(topics)):
        splits["val" if i % PROSE_VAL_EVERY == 0 else "train"].append((name, topics[name]))
    return splits


def code() -> dict[str, list[tuple[str, str]]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])

    def read(modules):
        return [
            (m, (stdlib / f"{m}.py").read_text(encoding="utf-8")[:MAX_CHARS_PER_FILE])
            for m in modules
        ]

    return {"train": read(CODE_TRAIN_MODULES), "val": read(CODE_VAL_MODULES)}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for domain, splits in (("prose", prose()), ("code", code())):
        for split, docs in splits.items():
            path = OUT / f"{domain}_{split}.jsonl"
            lines = [json.dumps({"name": n, "text": t}, ensure_ascii=False) for n, t in docs]
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            chars = sum(len(t) for _, t in docs)
            print(f"{path.name}: {len(docs)} documents, {chars:,} characters")
    print(f"from Python {platform.python_version()}")


if __name__ == "__main__":
    main()
