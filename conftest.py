"""Shared pytest set-up: offline hubs, and a record of how long each notebook took under nbval."""

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent
_NOTEBOOK_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """Sum the call time of every nbval cell per notebook (benchmarks/ reports these)."""
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb") and report.when == "call":
        _NOTEBOOK_SECONDS[path] = _NOTEBOOK_SECONDS.get(path, 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller sees all reports
        return
    if _NOTEBOOK_SECONDS:  # merge, so running one chapter keeps the others' last times
        out = ROOT / "test-output" / "notebook_seconds.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        seconds = json.loads(out.read_text()) if out.exists() else {}
        seconds.update(_NOTEBOOK_SECONDS)
        out.write_text(json.dumps(dict(sorted(seconds.items())), indent=1))


@pytest.fixture
def one_thread():
    """Run a test on one thread: small tensors are faster so on a shared 2-core machine, and
    numbers documented from single-threaded runs (the shipped checkpoints) are reproduced."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
