"""`pip install minilora` for homework: build the wheel, install it in a fresh venv, use it.

The wheel must carry the shipped checkpoints and text corpora (package data), depend on numpy,
torch and safetensors only, and work with the repository off ``sys.path``. The fresh venv gets
the wheel with ``--no-deps``; its dependencies come from this environment's site-packages
through a ``.pth`` line (nothing is downloaded, torch is not installed again). The homework
script refuses to import the notebook stack, so a stray import of it fails the test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COURSE_ONLY = ("matplotlib", "ipywidgets", "jupyterlab", "datasets", "sklearn", "tqdm", "peft")

HOMEWORK = textwrap.dedent(
    f"""
    import sys
    for name in {COURSE_ONLY!r}:  # the notebook stack is not there for homework
        sys.modules[name] = None
    import pathlib, tempfile
    import torch
    from torch import nn
    import minilora
    print("minilora from", minilora.__file__)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    minilora.add_lora(model, ["0", "2"], r=2, alpha=4)           # LoRA on a small model
    with torch.no_grad():
        model[0].lora_B.normal_()
    x = torch.randn(4, 8)
    y = model(x)
    path = pathlib.Path(tempfile.mkdtemp()) / "adapter.safetensors"
    minilora.save_adapter(model, path)                            # save / load
    torch.manual_seed(0)
    fresh = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    assert torch.equal(minilora.load_adapter(fresh, path)(x), y)

    qlora = minilora.quantize_model(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 2)))
    minilora.add_lora(qlora, ["0"], r=2)                          # QLoRA
    qlora(torch.randn(2, 64)).sum().backward()
    assert qlora[0].lora_B.grad is not None

    from minilora.course.checkers import check_scaling            # a homework checker
    check_scaling(lambda alpha, r, rs: alpha / r ** 0.5 if rs else alpha / r)

    from minilora.lab.pretrain import load_pretrained             # a shipped checkpoint
    gpt = load_pretrained("char_gpt")
    from minilora.lab.data import load_text                       # the shipped corpora
    assert len(load_text("prose", "val")) > 10_000
    print("homework ok:", sum(p.numel() for p in gpt.parameters()))
    """
)


def test_wheel_installs_and_runs_homework_off_the_repository(tmp_path):
    src = tmp_path / "src"  # build from a copy, so the build leaves no files in the repository
    shutil.copytree(
        ROOT / "minilora", src / "minilora", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("minilora-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for data in ("checkpoints/char_gpt.safetensors", "checkpoints/digits_mlp.safetensors",
                 "corpora/prose_train.jsonl", "corpora/code_val.jsonl"):  # fmt: skip
        assert f"minilora/lab/{data}" in names
    required = [line.split(":", 1)[1].strip() for line in meta.splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]  # fmt: skip
    assert sorted(r.split(">")[0].split("<")[0].split("=")[0] for r in required) == [
        "numpy",
        "safetensors",
        "torch",
    ]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], check=True)
    new_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # numpy, torch, safetensors from this environment (a plain path: its .pth files, such as
    # the editable install of minilora, are not run)
    (Path(new_site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = tmp_path / "work" / "homework.py"
    script.parent.mkdir()
    script.write_text(HOMEWORK)
    run = subprocess.run(
        [str(python), "-I", str(script)], cwd=script.parent, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"minilora from {new_site}/minilora/__init__.py" in run.stdout  # the wheel's copy
    assert "homework ok: 116705" in run.stdout
