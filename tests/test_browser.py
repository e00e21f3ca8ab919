"""The student's experience, end to end: JupyterLab in a real browser, every slider chapter.

nbval runs the kernel but cannot see the page: a slider that shows "Error displaying widget", a
JupyterLab without the widgets extension, or a callback that redraws nothing would all pass it.
Here Debian's Chromium, driven by Playwright, opens each chapter that has a slider (a copy with
its outputs cleared) in the project's own JupyterLab, runs all cells, and checks that

* no cell ends in an error (read back from the saved notebook) and no widget failed to render;
* every slider renders, and moving it with the keyboard changes its readout and the figure it
  controls (the PNG bytes differ), within REDRAW_BOUND_S seconds.

A screenshot per chapter goes to test-output/browser/. Chromium comes from `make browser`
(apt); without it the test is skipped here, but CI sets MINILORA_REQUIRE_BROWSER=1 and a skip
becomes a failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# From key press to a new figure on screen, median of three moves: sliders must feel live.
# (Measured under CI's load, with the other test worker running notebooks on the second core.)
REDRAW_BOUND_S = 2.0
MOVES = ("ArrowRight", "ArrowLeft", "ArrowRight")
RUN_ALL_TIMEOUT_S = float(os.environ.get("MINILORA_RUN_ALL_TIMEOUT", 240))
# Chapters whose Run All needs longer. 11 loads and trains a 135M-parameter model: its cells take
# 400-820 s on a 2-core machine running two to five other notebooks beside it (~250 s of CPU time
# alone), and the whole browser test for it took 949 s with four other notebooks running.
SLOW_CHAPTERS_S = {"11": 1200.0}
OUT_DIR = ROOT / "test-output" / "browser"
TIMINGS: dict[str, list[float]] = {}


def slider_notebooks() -> list[Path]:
    """Chapters whose code builds a slider (override with MINILORA_BROWSER_NOTEBOOKS=a,b)."""
    if os.environ.get("MINILORA_BROWSER_NOTEBOOKS"):
        return [Path(p) for p in os.environ["MINILORA_BROWSER_NOTEBOOKS"].split(",")]
    found = []
    for path in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        if "slider" in code:
            found.append(path)
    return found


def run_all_timeout(notebook: Path) -> float:
    """Seconds Run All may take: the default, or more for a chapter listed in SLOW_CHAPTERS_S."""
    return max(RUN_ALL_TIMEOUT_S, SLOW_CHAPTERS_S.get(notebook.stem[:2], 0.0))


def _browser_missing_reason() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not installed (run `make browser`, which uses apt)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "python playwright is not installed"
    return None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The project's JupyterLab (`make lab`) on a free loopback port, serving a scratch folder."""
    reason = _browser_missing_reason()
    if reason:
        if os.environ.get("MINILORA_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser test required here but cannot run: {reason}")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("lab")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = (
        f"--no-browser --ip=127.0.0.1 --port={port} --IdentityProvider.token= "
        "--ServerApp.password= --LabApp.news_url=None --LabApp.check_for_updates_class="
        "jupyterlab.NeverCheckForUpdate"
    )
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(root / ".runtime"))
    env.pop("MPLBACKEND", None)  # the kernel in the page must use the inline backend
    log = open(root / "lab.log", "wb")
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "lab", f"LAB_DIR={root}", f"LAB_ARGS={args}"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2).close()
                break
            except OSError as err:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(
                        f"JupyterLab did not start: {(root / 'lab.log').read_text()}"
                    ) from err
                time.sleep(0.5)
        yield url, root
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # stop make and jupyter by the group's PID
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def browser(lab, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path_factory.mktemp("chromium-profile")),  # fresh each run
            executable_path=CHROMIUM,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        yield context
        context.close()


def _cleared_copy(src: Path, dest_dir: Path) -> str:
    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, dest_dir / src.name)
    return src.name


def _wait_idle_and_done(page, timeout_s: float) -> None:
    """All code cells have run: no '[*]' prompt and every prompt holds a number."""
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll(
                '.jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent.trim());
            return prompts.length > 0 && prompts.every(t => /^\\[\\d+\\]:$/.test(t));
        }""",
        timeout=timeout_s * 1000,
        polling=500,
    )


def _figure_bytes(slider_box) -> str:
    """The src of the PNG in the widget's output area (a data URI or blob URL)."""
    img = slider_box.locator(".jp-OutputArea-output img, .widget-output img").first
    img.wait_for(state="visible", timeout=30_000)
    return img.get_attribute("src") or ""


def _move_and_time(page, slider, box, key: str) -> float | None:
    """Press an arrow key on the slider's handle; seconds until readout AND figure changed."""
    readout = slider.locator(".widget-readout")
    before_text, before_fig = readout.inner_text().strip(), _figure_bytes(box)
    slider.locator(".noUi-handle").first.focus()
    start = time.monotonic()
    page.keyboard.press(key)
    page.wait_for_timeout(50)
    if readout.inner_text().strip() == before_text:  # at that end of the range: go the other way
        other = "ArrowLeft" if key == "ArrowRight" else "ArrowRight"
        start = time.monotonic()
        page.keyboard.press(other)
    page.wait_for_function(
        "([el, old]) => el.textContent.trim() !== old",
        arg=[readout.element_handle(), before_text],
        timeout=10_000,
    )
    while _figure_bytes(box) == before_fig:
        if time.monotonic() - start > 30:
            return None
        page.wait_for_timeout(20)
    return time.monotonic() - start


@pytest.mark.parametrize("notebook", slider_notebooks(), ids=lambda p: p.stem)
def test_chapter_runs_and_sliders_redraw_in_the_browser(notebook, lab, browser):
    url, root = lab
    name = _cleared_copy(notebook, root)
    page = browser.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    try:
        page.goto(f"{url}/lab/tree/{name}?reset", wait_until="domcontentloaded")
        page.locator(".jp-Notebook").first.wait_for(state="visible", timeout=60_000)
        # A fresh profile may be asked which kernel to start: take the notebook's own.
        page.wait_for_timeout(2000)
        dialog_select = page.locator(".jp-Dialog .jp-mod-accept")
        if dialog_select.count():
            dialog_select.first.click()
        page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
            state="attached", timeout=60_000
        )
        # Run > Run All Cells (the runmenu:run-all command)
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        _wait_idle_and_done(page, run_all_timeout(notebook))

        # Save, then read the executed notebook back: no cell may end in an error.
        page.keyboard.press("Control+s")
        page.wait_for_timeout(1500)
        saved = json.loads((root / name).read_text())
        errors = [
            f"cell {i}: {o.get('ename')}: {o.get('evalue')}"
            for i, c in enumerate(saved["cells"])
            for o in c.get("outputs", [])
            if o.get("output_type") == "error"
        ]
        assert not errors, f"{name}: errors after Run All: {errors}"
        body = page.locator(".jp-Notebook").first.inner_text()
        assert "Error displaying widget" not in body, f"{name}: a widget failed to render"
        assert "Error rendering" not in body

        sliders = page.locator(".widget-slider")
        assert sliders.count() > 0, f"{name}: no slider rendered (widgets extension missing?)"
        timings = TIMINGS.setdefault(notebook.stem, [])
        for i in range(sliders.count()):
            slider = sliders.nth(i)
            # The slider's box (HBox of sliders + output) is the nearest widget-vbox around it.
            box = slider.locator("xpath=ancestor::div[contains(@class,'widget-vbox')][1]")
            seconds = [_move_and_time(page, slider, box, key) for key in MOVES]
            timings.extend(seconds)
            assert all(t is not None for t in seconds), f"{name}: slider {i} did not redraw"
            typical = sorted(seconds)[len(seconds) // 2]
            assert typical < REDRAW_BOUND_S, f"{name}: slider {i} redraws in {seconds} s"
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        news = page.get_by_role("button", name="No", exact=True)  # the "Jupyter news?" toast
        if news.count():
            news.first.click()
        sliders.first.scroll_into_view_if_needed()
        page.screenshot(path=str(OUT_DIR / f"{notebook.stem}.png"))
        (OUT_DIR / "redraw_seconds.json").write_text(json.dumps(TIMINGS, indent=1))
        assert not page_errors, f"{name}: JavaScript errors in the page: {page_errors}"
    except Exception:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(OUT_DIR / f"{notebook.stem}-FAILED.png"))
        raise
    finally:
        page.close()


def test_every_slider_chapter_is_found():
    """The parametrization above must not silently shrink: these chapters have sliders."""
    stems = {p.stem[:2] for p in slider_notebooks()}
    assert {"01", "03", "04", "05", "07", "08", "11"} <= stems, (
        f"slider chapters found: {sorted(stems)}"
    )
