"""Chapter 06's worked solutions give the numbers their docstrings state."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the instructor/ folder

from instructor.ch06 import small_update_merge  # noqa: E402


def test_a_small_learning_rate_puts_the_merge_in_the_crossover(one_thread):
    small = small_update_merge(lr=1e-4)
    large = small_update_merge(lr=1e-2)
    for name in small:
        assert 0.1 < small[name]["rho"] < 0.35 and 0.25 < small[name]["rel_fro_delta"] < 0.6
        assert large[name]["rho"] > 0.5 and large[name]["rel_fro_delta"] < 0.2
        assert small[name]["rel_fro_delta"] > 2 * large[name]["rel_fro_delta"]
