"""The one timing helper every benchmark uses: medians of interleaved repeats, and ratios.

These machines are shared and noisy, so an absolute time means little; a ratio of two times
measured side by side in the same process means more. ``time_rounds`` therefore runs the
callables it compares *in turns*: each round calls every one of them once, in an order rotated
by one place per round, so a slow spell of the machine hits all of them alike and none is always
first (first in a round tends to find colder caches). The median of the rounds ignores the odd
round that a neighbour's process spoiled.

Threads are fixed once for the whole run with ``fix_threads`` and reported in the results:
a matmul's speed depends on how many cores it may use.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def fix_threads(n: int) -> int:
    """Make torch use ``n`` threads (intra-op) and return the count it really uses."""
    import torch

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the thread count must be an integer >= 1, got {n!r}")
    torch.set_num_threads(n)
    return torch.get_num_threads()


def time_rounds(
    fns: dict[str, Callable[[], object]],
    repeats: int = 5,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds of every call of each callable in ``fns``, measured in interleaved rounds.

    ``warmup`` untimed rounds come first (allocator, caches, lazy initialisation), then
    ``repeats`` timed rounds. Round i calls the callables starting from the i-th one
    (a rotation), so over the rounds each takes every position equally often. Returns, per
    name, the ``repeats`` times in round order (so times of the same round can be paired).
    """
    if not fns:
        raise ValueError("time_rounds needs at least one callable to time")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock()
            fns[name]()
            times[name].append(clock() - start)
    return times


def median_times(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1):
    """Median seconds per call of each callable (``time_rounds``, then the median)."""
    return {name: statistics.median(ts) for name, ts in time_rounds(fns, repeats, warmup).items()}


def ratio_rows(
    group: str,
    rounds: dict[str, list[float]],
    reference: str,
    notes: dict[str, str] | None = None,
) -> list[dict]:
    """One row per timed case: its median seconds and its ratio to the ``reference`` case.

    ``rounds`` is what ``time_rounds`` returns. The ratio is the median over rounds of
    (this case's time / the reference's time *in the same round*): pairing the two calls that
    ran seconds apart cancels most of a slow spell, which a ratio of two medians would not.
    A ratio above 1 means slower than the reference. Rows are plain dicts with the keys
    ``group``, ``case``, ``seconds``, ``ratio``, ``vs`` and ``note`` (what ``run.py`` prints).
    """
    if reference not in rounds:
        raise ValueError(f"reference {reference!r} is not one of the timed cases {list(rounds)}")
    notes = notes or {}
    ref = rounds[reference]
    return [
        {
            "group": group,
            "case": name,
            "seconds": statistics.median(ts),
            "ratio": statistics.median(t / r for t, r in zip(ts, ref, strict=True)),
            "vs": reference,
            "note": notes.get(name, ""),
        }
        for name, ts in rounds.items()
    ]
