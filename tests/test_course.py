"""minilora.course: the set-up call, the palette and the slider plumbing every chapter uses."""

import matplotlib
import pytest

matplotlib.use("Agg")

from minilora.course import COLORS, setup  # noqa: E402
from minilora.course.widgets import choice_slider, slider_plot  # noqa: E402


def test_slider_plot_redraws_on_a_new_value_and_needs_a_slider():
    seen = []
    box = slider_plot(lambda r: seen.append(r), r=choice_slider("r", [1, 2, 4], value=2))
    slider = box.children[0].children[0]
    assert slider.options == (1, 2, 4) and slider.value == 2 and not slider.continuous_update
    slider.value = 4
    assert seen[-1] == 4
    with pytest.raises(ValueError, match="at least one slider"):
        slider_plot(lambda: None)


def test_setup_is_deterministic_and_colors_cover_the_methods():
    import torch

    setup(3)
    a = torch.rand(3)
    setup(3)
    assert torch.equal(a, torch.rand(3))
    assert {"base", "full", "lora", "qlora"} <= set(COLORS)
