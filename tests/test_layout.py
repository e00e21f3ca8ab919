"""The package's shape: imports point down, the front door is small, the core stays small.

- ``import minilora`` is the homework API only (``__all__``) and pulls in no notebook stack.
- Idea modules never import ``minilora.lab`` or ``minilora.course``; ``targets`` and ``budget``
  import no torch at module level.
- Code lines (what ``code_lines`` counts: lines holding code, not blank, comment or docstring
  lines) stay within the issue's bounds, and README's size table states the current counts.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import minilora

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minilora"
IDEAS = ("lora_numpy", "budget", "targets", "lora", "adapters", "nf4", "intrinsic")
NOT_CODE = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}


def docstring_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                if isinstance(first.value.value, str):
                    lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def code_lines(source: str, start: int = 1, end: int | None = None) -> int:
    """Lines from ``start`` to ``end`` that hold a token of code (docstrings do not count)."""
    skip = docstring_lines(ast.parse(source))
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in NOT_CODE and tok.type != tokenize.ENDMARKER:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return len({n for n in lines - skip if n >= start and (end is None or n <= end)})


def module_imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_front_door_is_the_homework_api_and_light():
    assert 15 <= len(minilora.__all__) <= 25
    assert all(hasattr(minilora, name) for name in minilora.__all__)
    code = "import sys, minilora; print(sorted(m for m in ('datasets', 'sklearn', 'matplotlib', 'ipywidgets') if m in sys.modules))"  # noqa: E501
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_imports_point_down():
    for name in IDEAS:
        imported = module_imports(PACKAGE / f"{name}.py")
        upward = {m for m in imported if m.startswith(("minilora.lab", "minilora.course"))}
        assert not upward, f"minilora/{name}.py imports {upward}"
        assert "minilora" not in imported, f"minilora/{name}.py imports the package's front door"
    for name in ("targets", "budget"):  # pure Python: the arithmetic needs no torch
        top = module_imports(PACKAGE / f"{name}.py", top_level_only=True)
        assert not {m for m in top if m.split(".")[0] == "torch"}, name


def measured_sizes() -> dict[str, int]:
    sizes = {name: code_lines((PACKAGE / f"{name}.py").read_text()) for name in IDEAS}
    source = (PACKAGE / "lora.py").read_text()
    layer = next(
        n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "LoRALinear"
    )
    sizes["LoRALinear"] = code_lines(source, layer.lineno, layer.end_lineno)
    return sizes


def test_the_core_stays_readable_in_one_sitting():
    sizes = measured_sizes()
    assert sizes["LoRALinear"] <= 85, sizes
    assert all(sizes[name] <= 300 for name in IDEAS), sizes


def test_readme_states_the_measured_sizes():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- module-map -->")[1].split("<!-- /module-map -->")[0]
    stated = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"`minilora/(\w+)\.py`[^|]*\|[^|]*\|\s*([\d,]+)\s*\|", table)
    }
    sizes = measured_sizes()
    assert stated == {name: sizes[name] for name in IDEAS}
    readme = " ".join(readme.split())  # line breaks in prose are spaces
    layer = re.search(r"`LoRALinear` itself is (\d+) code lines", readme)
    assert layer and int(layer.group(1)) == sizes["LoRALinear"]
    core = re.search(r"core of the course, `lora_numpy`, `lora` and `nf4`, is ([\d,]+)", readme)
    total = sizes["lora_numpy"] + sizes["lora"] + sizes["nf4"]
    assert core and int(core.group(1).replace(",", "")) == total
