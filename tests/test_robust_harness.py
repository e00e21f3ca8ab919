"""The numerics harness's seed run must move everything the parameters cell derives from SEED."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def robust(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("robust", ROOT / ".ci" / "robust.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", tmp_path / "out")
    return module


def notebook(tmp_path, params):
    cells = [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "outputs": [],
         "execution_count": None, "source": params},
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
         "source": "result = (SEED, SEEDS)\n# NBVAL_CHECK_OUTPUT"},
    ]  # fmt: skip
    path = tmp_path / "nb.ipynb"
    nb = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))
    return path


def test_seed_run_moves_values_derived_from_seed(robust, tmp_path):
    path = notebook(tmp_path, "SEED = 0  # any seed\nSEEDS = (SEED, SEED + 1, SEED + 2)\n")
    copy = json.loads(robust.seeded_copy(path, 7).read_text())
    scope = {}
    for cell in copy["cells"]:
        exec(cell["source"], scope)
    assert scope["result"] == (7, (7, 8, 9))
    assert all("NBVAL_CHECK_OUTPUT" not in c["source"] for c in copy["cells"])


def test_parameters_cell_without_a_seed_line_is_refused(robust, tmp_path):
    with pytest.raises(SystemExit, match="SEED = <int>"):
        robust.seeded_copy(notebook(tmp_path, "SEEDS = (0, 1)\n"), 7)
