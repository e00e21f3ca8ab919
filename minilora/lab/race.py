"""A fair race between ways of training: the protocol every trained comparison of the course uses.

Comparing two recipes at one learning rate and one seed mostly measures the learning rate and the
seed. Every race in the course follows the same rules:

1. **A grid per arm.** Each arm (a method at a rank, a projection at a dimension d, ...) gets its
   own learning-rate grid, about ×3 apart. Its best rate is the one with the best *mean over seeds*
   of a selection metric, and it must not sit on the grid's edge: ``race`` widens the grid by one
   step beyond that edge (up to ``widen`` times) and reports an arm whose best is still on the
   edge, so a chapter can refuse it.
2. **The stable region.** A rate at which any seed diverged (a non-finite metric) is never chosen.
3. **Seeds.** Every arm runs every seed at every rate. A result is the mean and the range over the
   seeds at the arm's best rate; "A against B" is the *paired* difference, seed by seed (the same
   seed gives both arms the same batches), shown next to the seed noise.
4. **Ties.** A difference inside the tie margin is a tie, not a win (``Race.verdict``).

``claim(name, value, op, bound)`` is the assert a chapter makes on a trained number. It fails with
a message that names the claim, and it records the value and its margin, so the numerics
harness (``make robust``: other seeds, another BLAS path, other ATen kernels) can report how much
room every claim had on each run.
"""

from __future__ import annotations

import json
import math
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

Metrics = Mapping[str, float]


@dataclass(frozen=True)
class Arm:
    """One contestant: ``train(lr, seed) -> {metric: value}`` and its learning-rate grid."""

    name: str
    train: Callable[[float, int], Metrics]
    lrs: Sequence[float]

    def __post_init__(self):
        lrs = list(self.lrs)
        if not lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in lrs):
            raise ValueError(f"arm {self.name!r}: lrs must be positive numbers, got {self.lrs!r}")
        if lrs != sorted(set(lrs)):
            raise ValueError(f"arm {self.name!r}: lrs must be distinct and ascending, got {lrs}")


@dataclass
class ArmResult:
    """Every run of one arm: ``runs[lr]`` holds one metrics dict per seed, in seed order."""

    name: str
    seeds: list[int]
    select: str
    higher_is_better: bool
    runs: dict[float, list[dict]] = field(default_factory=dict)

    @property
    def lrs(self) -> list[float]:
        """The grid actually run (after widening), ascending."""
        return sorted(self.runs)

    def stable(self, lr: float) -> bool:
        """True if no seed diverged at ``lr`` (every metric of every run is finite)."""
        return all(math.isfinite(v) for run in self.runs[lr] for v in run.values())

    def score(self, lr: float) -> float:
        """Mean over seeds of the selection metric; -inf for an unstable rate (never chosen)."""
        if not self.stable(lr):
            return -math.inf
        mean = float(np.mean([run[self.select] for run in self.runs[lr]]))
        return mean if self.higher_is_better else -mean

    @property
    def best_lr(self) -> float:
        return max(self.lrs, key=self.score)

    @property
    def at_edge(self) -> bool:
        """The best rate is the smallest or the largest one tried: the grid is too narrow."""
        return self.best_lr in (self.lrs[0], self.lrs[-1])

    def values(self, metric: str, lr: float | None = None) -> np.ndarray:
        """``metric`` of every seed at ``lr`` (default: the best rate), in seed order."""
        return np.array([run[metric] for run in self.runs[self.best_lr if lr is None else lr]])

    def mean(self, metric: str) -> float:
        return float(self.values(metric).mean())

    def spread(self, metric: str) -> tuple[float, float]:
        """(min, max) over seeds at the best rate."""
        v = self.values(metric)
        return float(v.min()), float(v.max())


@dataclass(frozen=True)
class Paired:
    """Seed-by-seed differences a − b of one metric, each arm at its own best rate."""

    values: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.values.mean())

    @property
    def lo(self) -> float:
        return float(self.values.min())

    @property
    def hi(self) -> float:
        return float(self.values.max())

    def __str__(self) -> str:
        return f"{self.mean:+.3f} (seeds {self.lo:+.3f} .. {self.hi:+.3f})"


class Race:
    """The results of ``race``: one ``ArmResult`` per arm, plus paired comparisons."""

    def __init__(self, arms: dict[str, ArmResult]):
        self.arms = arms

    def __getitem__(self, name: str) -> ArmResult:
        return self.arms[name]

    def __iter__(self):
        return iter(self.arms.values())

    def paired(self, a: str, b: str, metric: str) -> Paired:
        """Per-seed ``metric`` of arm a minus arm b (same seeds, each at its best rate)."""
        if self[a].seeds != self[b].seeds:
            raise ValueError(f"arms {a!r} and {b!r} ran different seeds; they cannot be paired")
        return Paired(self[a].values(metric) - self[b].values(metric))

    def verdict(self, a: str, b: str, metric: str, tie: float, higher_is_better=None) -> str:
        """``a`` or ``b`` if it is better on every seed and on average by more than ``tie``;
        otherwise ``"tie"``.

        ``higher_is_better`` defaults to the selection metric's direction.
        """
        if tie < 0:
            raise ValueError(f"tie must be >= 0, got {tie}")
        up = self[a].higher_is_better if higher_is_better is None else higher_is_better
        d = self.paired(a, b, metric).values * (1 if up else -1)  # > 0: a is better
        if d.mean() > tie and d.min() > 0:
            return a
        if d.mean() < -tie and d.max() < 0:
            return b
        return "tie"

    def table(self, metrics: Sequence[str], fmt: str = ".3f") -> str:
        """One row per arm: best rate, then mean (min..max over seeds) of each metric."""
        width = max(len(name) for name in self.arms)
        head = f"{'arm':<{width}}  {'best lr':>8}" + "".join(f"  {m:>24}" for m in metrics)
        rows = [head]
        for arm in self:
            cells = []
            for m in metrics:
                lo, hi = arm.spread(m)
                cells.append(
                    f"  {format(arm.mean(m), fmt):>8} ({format(lo, fmt)}..{format(hi, fmt)})"
                )
            edge = "  ← best on the grid's edge" if arm.at_edge else ""
            rows.append(f"{arm.name:<{width}}  {arm.best_lr:>8.0e}" + "".join(cells) + edge)
        return "\n".join(rows)

    def grid_table(self, metric: str, fmt: str = ".3f") -> str:
        """The mean over seeds of ``metric`` at every rate of every arm (unstable: 'diverged')."""
        lrs = sorted({lr for arm in self for lr in arm.lrs})
        width = max(len(name) for name in self.arms)
        rows = [f"{'lr':<{width}}" + "".join(f"{lr:>10.0e}" for lr in lrs)]
        for arm in self:
            cells = []
            for lr in lrs:
                if lr not in arm.runs:
                    cells.append(f"{'':>10}")
                elif not arm.stable(lr):
                    cells.append(f"{'diverged':>10}")
                else:
                    mark = "*" if lr == arm.best_lr else " "
                    cells.append(f"{format(arm.values(metric, lr).mean(), fmt):>9}{mark}")
            rows.append(f"{arm.name:<{width}}" + "".join(cells))
        return "\n".join(rows) + "\n(* = the arm's best rate, by the mean over seeds)"


def race(
    arms: Sequence[Arm],
    seeds: Sequence[int],
    select: str,
    higher_is_better: bool = True,
    widen: int = 2,
    progress: bool = True,
) -> Race:
    """Run every arm at every rate of its grid with every seed; widen grids whose best is an edge.

    ``select`` names the metric that picks each arm's best rate (by its mean over ``seeds``).
    When the best rate is the smallest or largest tried, one more rate is run beyond that edge,
    spaced like the grid's last step, up to ``widen`` times per arm (an unstable rate beyond the
    edge leaves the best inside the stable region). Returns a ``Race``.
    """
    seeds = list(seeds)
    if len(seeds) < 1 or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be distinct, got {names}")
    total = sum(len(arm.lrs) for arm in arms) * len(seeds)
    bar = tqdm(total=total, desc="race", disable=not progress)
    results = {}
    for arm in arms:
        result = ArmResult(arm.name, seeds, select, higher_is_better)

        def run(lr, arm=arm, result=result):
            result.runs[lr] = []
            for seed in seeds:
                metrics = {k: float(v) for k, v in arm.train(lr, seed).items()}
                if select not in metrics:
                    raise KeyError(f"arm {arm.name!r} returned no {select!r} (got {list(metrics)})")
                result.runs[lr].append(metrics)
                bar.update(1)

        for lr in arm.lrs:
            run(lr)
        for _ in range(widen):
            lrs, best = result.lrs, result.best_lr
            if not result.at_edge or not result.stable(best) or len(lrs) < 2:
                break
            if best == lrs[-1]:
                nxt = lrs[-1] * lrs[-1] / lrs[-2]
            else:
                nxt = lrs[0] * lrs[0] / lrs[1]
            bar.total += len(seeds)
            run(nxt)
        results[arm.name] = result
    bar.close()
    return Race(results)


def arm_together(
    name: str,
    train_many: Callable[[list[tuple[float, int]]], Sequence[Metrics]],
    lrs: Sequence[float],
    seeds: Sequence[int],
) -> Arm:
    """An ``Arm`` whose runs are trained together (e.g. with ``train_classifiers_together``).

    ``train_many(runs)`` takes a list of ``(lr, seed)`` and returns one metrics dict per run, in
    order. The arm's first run trains its whole grid × ``seeds`` in one call and keeps the
    results; a rate that ``race`` adds beyond a grid edge is trained with every seed in one more
    call. ``race`` sees an ordinary arm: the protocol (grid, widening, seeds, pairing) is unchanged.
    """
    done: dict[tuple[float, int], Metrics] = {}
    grid, seeds = list(lrs), list(seeds)

    def train(lr: float, seed: int) -> Metrics:
        if (lr, seed) not in done:
            rates = grid if lr in grid else [lr]
            todo = [(r, s) for r in rates for s in seeds if (r, s) not in done]
            if (lr, seed) not in todo:
                todo.append((lr, seed))
            results = list(train_many(todo))
            if len(results) != len(todo):
                raise ValueError(
                    f"arm {name!r}: train_many returned {len(results)} results for {len(todo)} runs"
                )
            done.update(zip(todo, results, strict=True))
        return done[lr, seed]

    return Arm(name, train, lrs)


def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both x and y (lower is better on both).

    Chapter 08's learning-vs-forgetting frontier: x = target loss, y = forgetting. Sorted by x.
    """
    pts = sorted(range(len(xs)), key=lambda i: (xs[i], ys[i]))
    front, best_y = [], math.inf
    for i in pts:
        if ys[i] < best_y:
            front.append(i)
            best_y = ys[i]
    return front


_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def claim(name: str, value: float, op: str, bound: float) -> float:
    """Assert ``value op bound`` for a named claim; return the margin (> 0 when it holds).

    The margin is how far the value sits inside the bound (``value - bound`` for > and >=,
    ``bound - value`` for < and <=). If the environment variable ``MINILORA_CLAIMS`` names a file,
    one JSON line is appended to it (chapter, claim, value, bound, margin) for the harness's
    report; ``MINILORA_NOTEBOOK`` names the chapter (set by the test runner). Without it nothing
    is recorded, so a kernel that another test starts cannot pose as a chapter's run.
    """
    if op not in _OPS:
        raise ValueError(f"op must be one of {sorted(_OPS)}, got {op!r}")
    value, bound = float(value), float(bound)
    margin = value - bound if op in (">", ">=") else bound - value
    path, notebook = os.environ.get("MINILORA_CLAIMS"), os.environ.get("MINILORA_NOTEBOOK")
    if path and notebook:
        record = {
            "notebook": notebook,
            "claim": name,
            "value": value,
            "op": op,
            "bound": bound,
            "margin": margin,
        }
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    if not (math.isfinite(value) and _OPS[op](value, bound)):
        raise AssertionError(f"claim failed: {name}: {value:.6g} is not {op} {bound:.6g}")
    return margin
