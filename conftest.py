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


def pytest_configure(config):
    """Record every chapter's claims (minilora.lab.race.claim) of this run for `make robust`."""
    if hasattr(config, "workerinput") or "MINILORA_CLAIMS" in os.environ:
        return  # an xdist worker inherits the controller's setting; the harness sets its own
    claims = ROOT / "test-output" / "claims" / "test.jsonl"
    claims.parent.mkdir(parents=True, exist_ok=True)
    claims.write_text("")
    os.environ["MINILORA_CLAIMS"] = str(claims)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Tell a notebook's kernel which chapter it runs: nbval starts the kernel while it sets up
    the notebook's first cell, after this hook, and the kernel inherits the environment."""
    path = item.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        os.environ["MINILORA_NOTEBOOK"] = Path(path).stem
    else:  # kernels a test starts (the browser test's JupyterLab) are not the chapter's run
        os.environ.pop("MINILORA_NOTEBOOK", None)


def pytest_runtest_logreport(report):
    """Sum the call time of every nbval cell per notebook (benchmarks/ reports these)."""
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb") and report.when == "call":
        _NOTEBOOK_SECONDS[path] = _NOTEBOOK_SECONDS.get(path, 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller sees all reports
        return
    if os.environ.get("MINILORA_ROBUST"):  # a perturbed re-run (make robust): not the real times
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


# --- chapter 08's machinery in miniature (tests/test_forgetting.py, tests/test_instructor_ch08.py)


@pytest.fixture
def tiny_char_gpt():
    """A one-block char-GPT, seeded: small enough to fine-tune in a unit test."""
    from minilora.lab.models import CharGPT, GPTConfig

    torch.manual_seed(0)
    return CharGPT(GPTConfig(block_size=16, n_layer=1, n_head=2, d_model=16, d_ff=32)).eval()


@pytest.fixture
def two_domain_task():
    """``make(steps)`` → a forgetting Task on two token streams with different statistics: the
    source "domain" cycles through a-z, the target through 0-9."""
    from minilora.lab.forgetting import Task

    source = torch.arange(3000) % 26 + 67
    target = torch.arange(3000) % 10 + 18

    def make(steps: int) -> Task:
        return Task(target, target[:800], source[:800], steps=steps, batch_size=4, eval_every=4,
                    eval_batches=2)  # fmt: skip

    return make
