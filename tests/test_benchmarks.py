"""benchmarks.timing: interleaving, medians and paired ratios, with a fake clock (no timing)."""

import pytest

from benchmarks.timing import median_times, ratio_rows, time_rounds


class FakeClock:
    """A clock that only moves when a fake callable 'runs' for a chosen number of seconds."""

    def __init__(self):
        self.now = 0.0
        self.calls = []

    def __call__(self):
        return self.now

    def work(self, name, seconds):
        def fn():
            self.calls.append(name)
            self.now += seconds[len([c for c in self.calls if c == name]) - 1]

        return fn


def test_rounds_rotate_the_order_and_warm_up_untimed():
    clock = FakeClock()
    fns = {n: clock.work(n, [0.0] * 10) for n in "abc"}
    time_rounds(fns, repeats=3, warmup=1, clock=clock)
    # warm-up a b c, then rounds starting at a, b, c: each case takes every position once
    assert clock.calls == list("abc" + "abc" + "bca" + "cab")


def test_medians_and_paired_ratios():
    clock = FakeClock()
    # per call (warm-up first, then 3 timed rounds); round 2 is a slow spell for both
    ref = clock.work("ref", [9.0, 1.0, 10.0, 1.25])
    new = clock.work("new", [9.0, 2.0, 30.0, 2.5])
    rounds = time_rounds({"ref": ref, "new": new}, repeats=3, warmup=1, clock=clock)
    assert rounds == {"ref": [1.0, 10.0, 1.25], "new": [2.0, 30.0, 2.5]}
    rows = {r["case"]: r for r in ratio_rows("g", rounds, "ref", {"new": "n"})}
    assert rows["new"]["seconds"] == 2.5 and rows["ref"]["seconds"] == 1.25
    # per-round ratios 2, 3, 2 -> median 2
    assert rows["new"]["ratio"] == pytest.approx(2.0)
    assert rows["ref"]["ratio"] == 1.0
    assert rows["new"]["note"] == "n" and rows["new"]["vs"] == "ref"


def test_paired_ratio_cancels_a_slow_spell_that_medians_do_not():
    # the machine slows 5x for the last rounds; "new" always takes twice "ref" in the same round
    rounds = {"ref": [1.0, 1.0, 1.0, 5.0, 5.0], "new": [2.0, 2.0, 10.0, 10.0, 10.0]}
    rows = {r["case"]: r for r in ratio_rows("g", rounds, "ref")}
    # rounds 1, 2, 4, 5 give 2, round 3 (slow only for "new") gives 10: the median is 2, while
    # the ratio of the medians would be 10 / 1 = 10
    assert rows["new"]["ratio"] == pytest.approx(2.0)


def test_median_times_calls_each_callable_warmup_plus_repeats_times():
    counts = {"a": 0, "b": 0}

    def make(name):
        def fn():
            counts[name] += 1

        return fn

    times = median_times({n: make(n) for n in counts}, repeats=4, warmup=2)
    assert counts == {"a": 6, "b": 6} and set(times) == {"a", "b"}
    assert all(t >= 0 for t in times.values())


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}, {"repeats": 1.5}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        time_rounds({"a": lambda: None}, **kwargs)
    with pytest.raises(ValueError, match="reference"):
        ratio_rows("g", {"a": [1.0]}, "b")
    with pytest.raises(ValueError, match="at least one"):
        time_rounds({})


# --- benchmarks.run: the markdown it writes, from made-up rows (nothing is timed) -------------
def test_results_tables_and_trailing_rows():
    from benchmarks.run import speed_tables, trailing

    rows = ratio_rows("G", {"ref": [1.0], "minilora x": [3.0], "PEFT x": [2.0]}, "ref")
    text = "\n".join(speed_tables(rows))
    assert "#### G" in text and "| minilora x | 3,000.0 ms | 3.000 |  |" in text
    (line,) = trailing(rows)
    assert "minilora x takes 1.50× the time of PEFT x" in line
    fast = ratio_rows("G", {"ref": [1.0], "minilora x": [2.0], "PEFT x": [2.0]}, "ref")
    assert trailing(fast)[0].startswith("- none")


def test_memory_table_ratios():
    from benchmarks.run import memory_tables

    def row(method, kept, peak, bits=None):
        return dict(base="m", method=method, trainable=1, weights=kept, grads=0, adam=0,
                    kept=kept, saved=0, peak_mib=peak, bits_4bit=bits, n_4bit=100)  # fmt: skip

    rows = [row("full", 4e6, 100.0), row("LoRA", 2e6, 50.0), row("QLoRA", 1e6, 25.0, 4.2)]
    text = "\n".join(memory_tables(rows, 4.0))
    assert "| LoRA | 1 | 2.00 | 0.00 | 0.00 | 2.00 | 0.00 | 50.0 | 0.500 |" in text
    assert "**4.2000 bits per weight** (limit 4.0000; ratio 1.0500)" in text
    assert "LoRA 0.500, QLoRA 0.250" in text
