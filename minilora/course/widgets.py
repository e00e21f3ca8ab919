"""Sliders that redraw a plot: the "drag r and watch" cells of the course.

Every interactive cell in the course is built the same way: a few sliders and a ``draw`` function
that makes one matplotlib figure from the sliders' values. ``slider_plot`` wires them together
with ``ipywidgets.interactive_output``, so the figure is re-rendered (as a PNG inside an
``Output`` widget) whenever a slider is released. ``draw`` must be cheap: precompute whatever it
needs before building the widget, so a redraw takes well under a second.

Each chapter builds its own slider in the notebook that uses it: it precomputes, defines
``draw``, then calls ``slider_plot``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt


def choice_slider(description: str, options: Sequence, value=None) -> widgets.SelectionSlider:
    """A slider over a fixed list of values (e.g. ranks 1, 2, 4, ..., 64), updated on release."""
    options = list(options)
    return widgets.SelectionSlider(
        options=options,
        value=options[0] if value is None else value,
        description=description,
        continuous_update=False,
        style={"description_width": "initial"},
        layout=widgets.Layout(width="420px"),
    )


def slider_plot(draw: Callable[..., None], **sliders: widgets.ValueWidget) -> widgets.VBox:
    """Sliders on top, the figure ``draw(**values)`` makes below, redrawn when a slider moves.

    ``draw`` receives each slider's value under its keyword name and should end with
    ``plt.show()`` so the figure lands in the output area.
    """
    if not sliders:
        raise ValueError("slider_plot needs at least one slider, e.g. r=choice_slider('r', [1, 2])")

    def _draw(**values):
        draw(**values)
        plt.close("all")  # never let figures pile up across redraws

    out = widgets.interactive_output(_draw, sliders)
    return widgets.VBox([widgets.HBox(list(sliders.values())), out])
