"""The install files agree with each other, so a student on pip and one on conda get one course."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """'numpy>=1.24' -> 'numpy' (PEP 503 normalised); '-e .' -> ''."""
    requirement = requirement.strip()
    if requirement.startswith("-"):
        return ""
    name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = project["dependencies"] + extras["course"] + extras["dev"]
    return {_name(r) for r in reqs}


def _environment_names() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    names = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):  # the pip: subsection
            names |= {_name(d) for d in dep["pip"]}
        else:
            names.add(_name(dep))
    return names - {"python", "pip", ""}


def test_environment_yml_names_the_same_packages_as_pyproject():
    pyproject, conda = _pyproject_names(), _environment_names()
    assert pyproject - conda == set(), (
        f"in pyproject.toml but not environment.yml: {pyproject - conda}"
    )
    assert conda - pyproject == set(), (
        f"in environment.yml but not pyproject.toml: {conda - pyproject}"
    )


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt must pin exact versions, got {line!r}"
            pins[_name(name)] = version
    return pins


def test_constraints_pin_every_dependency_and_torch_without_build_tag():
    pins = _constraints()
    missing = _pyproject_names() - set(pins)
    assert not missing, f"constraints.txt does not pin: {missing}"
    # A local tag such as +cpu would not resolve on a machine without that exact wheel.
    assert pins["torch"] == "2.13.0"


def test_installed_versions_match_the_lock():
    """The environment the tests run in is the one the notebooks were executed with."""
    from importlib.metadata import version

    pins = _constraints()
    for name in sorted(_pyproject_names()):
        installed = version(name).split("+")[0]
        assert installed == pins[name], f"{name}: installed {installed}, locked {pins[name]}"


def test_makefile_installs_pinned_torch_first():
    makefile = (ROOT / "Makefile").read_text()
    torch_at = makefile.index("torch==2.13.0")
    assert torch_at < makefile.index("-e '.[course,dev]'"), "torch before the package"
    assert "-c constraints.txt" in makefile
