"""Choosing layers by name: one matching rule for ``add_lora``, ``quantize_model`` and ``budget``.

Pure Python (no torch), so the arithmetic of chapter 03 can use it on names alone.

- A name in a list matches the full qualified name or a suffix at a dot boundary: ``"query"``
  matches ``"encoder.layer.0.attention.self.query"`` but not ``"my_query"``; ``"self.query"``
  works too.
- A compiled regex (``re.compile(r"layer\\.[0-2]\\..*query")``) must match the whole name.
- A single string on its own is also a regex matched against the whole name, as in PEFT
  (``target_modules=".*_proj"``); a plain name keeps its meaning above.

``select`` applies the rule to a list of names. A target that matches nothing is an error that
shows the names it could have meant, never a silent "adapted nothing".
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

Target = str | re.Pattern


class LoneString(str):
    """A single string given on its own: a regex over the whole name (PEFT), or a name (ours)."""


def name_matches(name: str, target: Target) -> bool:
    """Does the qualified module name ``name`` match ``target`` (a name or a compiled regex)?"""
    if isinstance(target, re.Pattern):
        return target.fullmatch(name) is not None
    if isinstance(target, LoneString):
        try:
            if re.fullmatch(target, name):
                return True
        except re.error:  # not a valid regex ("fc[1"): only the name rule applies
            pass
    return name == target or name.endswith("." + target)


def as_targets(targets, what: str = "target_modules") -> list[Target]:
    """A name, a regex or a non-empty list of them → a list; a lone string is also a regex."""
    if isinstance(targets, str):
        return [LoneString(targets)]
    if isinstance(targets, re.Pattern):
        return [targets]
    listed = list(targets) if isinstance(targets, Iterable) else []
    if not listed or not all(isinstance(t, (str, re.Pattern)) for t in listed):
        raise ValueError(
            f"{what} must be names or re.compile(...) patterns: one, or a non-empty list of "
            f"them; got {targets!r}"
        )
    return listed


def show(target: Target) -> str:
    """How a target is named in an error message."""
    if isinstance(target, re.Pattern):
        return f"re.compile({target.pattern!r})"
    return repr(str(target))


def layer_pattern(name: str) -> str:
    """``"encoder.layer.3.attention.self.query"`` → ``"encoder.layer.*.attention.self.query"``."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)", "*", name)


def summarize_names(names: Iterable[str], near: str = "", limit: int = 12) -> str:
    """A short list: repeated layers folded into ``*``, the names closest to ``near`` first."""
    patterns = list(dict.fromkeys(layer_pattern(n) for n in names))
    if not patterns:
        return "(none)"
    leaf = near.rsplit(".", 1)[-1]
    close = [
        p
        for p in patterns
        if near and difflib.SequenceMatcher(None, leaf, p.rsplit(".", 1)[-1]).ratio() >= 0.6
    ]
    ordered = close + [p for p in patterns if p not in close]
    shown = ", ".join(ordered[:limit])
    return shown + (f", ... ({len(patterns)} kinds in all)" if len(patterns) > limit else "")


def select(names: Iterable[str], targets, shown: Iterable[str] | None = None, what="module"):
    """The names (in their order) that any of ``targets`` matches; every target must match one.

    ``shown`` are the names an error message lists (default: ``names``), ``what`` names them.
    """
    names, targets = list(names), as_targets(targets)
    for target in targets:
        if not any(name_matches(n, target) for n in names):
            near = target if isinstance(target, str) else ""
            listed = summarize_names(names if shown is None else shown, near)
            raise ValueError(f"target {show(target)} matches no {what}. Candidates: {listed}")
    return [n for n in names if any(name_matches(n, t) for t in targets)]
