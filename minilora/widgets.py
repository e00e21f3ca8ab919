"""Sliders that redraw a plot: the "drag r and watch" cells of the course.

Every interactive cell in the course is built the same way: a few sliders and a ``draw`` function
that makes one matplotlib figure from the sliders' values. ``slider_plot`` wires them together
with ``ipywidgets.interactive_output``, so the figure is re-rendered (as a PNG inside an
``Output`` widget) whenever a slider is released. ``draw`` must be cheap: precompute whatever it
needs before building the widget, so a redraw takes well under a second.

Each chapter's slider is a small function below that precomputes and then calls ``slider_plot``.
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


# --- chapter sliders (each precomputes, then calls slider_plot) ---------------------------


def budget_slider(models: dict, ranks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256)):
    """Chapter 03: pick a model and a rank; see the memory table and one bar per method.

    ``models`` maps a label to ``(shape, targets)``: a ``minilora.budget.ModelShape`` and the
    names LoRA adapts in it. Every (model, rank) breakdown is computed before the widget exists,
    so a redraw only prints a table and draws three bars.
    """
    from minilora.budget import compare_memory, count_lora_parameters, format_bytes, memory_table
    from minilora.course import COLORS

    if not models:
        raise ValueError("budget_slider needs at least one model: {'label': (shape, targets)}")
    ranks = list(ranks)
    rows = {
        (label, r): (count_lora_parameters(shape, targets, r), compare_memory(shape, targets, r))
        for label, (shape, targets) in models.items()
        for r in ranks
    }

    def draw(model, r):
        (trainable, total), breakdowns = rows[(model, r)]
        print(f"{model}, LoRA r = {r} on {', '.join(models[model][1])}")
        print(f"{trainable:,} trainable of {total:,} parameters ({trainable / total:.4%})")
        print(memory_table(breakdowns))
        fig, ax = plt.subplots(figsize=(6.4, 2.2))
        totals = [b.total for b in breakdowns]
        names = [b.method for b in breakdowns]
        ax.barh(names, totals, color=[COLORS[n] for n in names])
        for y, t in enumerate(totals):
            ax.text(t, y, " " + format_bytes(t), va="center")
        for gpu in (24e9, 48e9, 80e9):  # common GPU memory sizes
            ax.axvline(gpu, color=COLORS["theory"], lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlim(min(totals) / 3, max(max(totals), 80e9) * 8)
        ax.invert_yaxis()
        ax.set_xlabel("bytes for weights, gradients and optimizer state (dotted: 24, 48, 80 GB)")
        plt.show()

    return slider_plot(
        draw,
        model=choice_slider("model", list(models)),
        r=choice_slider("rank r", ranks, value=8 if 8 in ranks else None),
    )


def rank_fit_slider(curves: dict, spectra: dict, target_sv: Sequence[float], floors: dict):
    """Chapter 01: pick a rank r; see its loss curve with the Eckart–Young floor, and the
    singular values LoRA learned next to those of the ideal update ΔW*.

    All three dicts map a rank r to what was precomputed for it: ``curves[r]`` the loss history,
    ``spectra[r]`` the singular values of the learned ΔW, ``floors[r]`` the predicted floor.
    """
    import numpy as np

    from minilora.course import COLORS

    if not curves or set(curves) != set(spectra) or set(curves) != set(floors):
        raise ValueError("rank_fit_slider needs curves, spectra and floors for the same ranks")
    target_sv = np.asarray(target_sv)

    def draw(r):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
        ax1.semilogy(curves[r], color=COLORS["lora"], label=f"LoRA r = {r}")
        if floors[r] > 1e-12 * curves[r][0]:  # a floor of 0 comes out as ~1e-32
            ax1.axhline(floors[r], color=COLORS["theory"], ls="--", label="Eckart–Young floor")
        ax1.set(xlabel="Adam step", ylabel="MSE", ylim=(1e-12, 3))
        ax1.legend()
        k = np.arange(1, len(target_sv) + 1)
        learned = np.zeros(len(target_sv))
        m = min(len(spectra[r]), len(learned))
        learned[:m] = spectra[r][:m]
        ax2.bar(k - 0.2, target_sv, 0.4, color=COLORS["theory"], label="ΔW* (target)")
        ax2.bar(k + 0.2, learned, 0.4, color=COLORS["lora"], label="learned ΔW")
        ax2.set(xlabel="singular value index i", ylabel="σ_i", xticks=k)
        ax2.legend()
        plt.tight_layout()
        plt.show()

    ranks = sorted(curves)
    return slider_plot(draw, r=choice_slider("LoRA rank r", ranks, value=ranks[0]))


def nf4_blocksize_slider(rows: Sequence[dict]):
    """Chapter 05: drag the NF4 blocksize, see its error against its storage (with/without DQ).

    ``rows`` is ``minilora.nf4.blocksize_tradeoff(w, blocksizes)``, computed once beforehand, so
    a redraw only re-plots: the whole curve stays visible and the chosen blocksize is marked.
    """
    from minilora.course import COLORS

    if not rows:
        raise ValueError("nf4_blocksize_slider needs the rows of blocksize_tradeoff(w, ...)")
    by_size = {row["blocksize"]: row for row in rows}

    def draw(blocksize):
        row = by_size[blocksize]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
        styles = (("", "absmax in fp32", "other"), ("_dq", "double quant", "qlora"))
        for suffix, label, color in styles:
            bits = [r["bits" + suffix] for r in rows]
            errors = [100 * r["error" + suffix] for r in rows]
            ax1.plot(bits, errors, "o-", color=COLORS[color], label=label, alpha=0.6)
            ax1.plot(row["bits" + suffix], 100 * row["error" + suffix], "o", ms=12,
                     color=COLORS[color], mfc="none", mew=2)  # fmt: skip
        ax1.set(xlabel="storage (bits per weight)", ylabel="relative error (%)",
                title=f"blocksize {blocksize}")  # fmt: skip
        ax1.legend()
        # Where the bits go: 4 for the code, the rest for the scales.
        parts = [("fp32 absmax", row["bits"] - 4), ("double quant", row["bits_dq"] - 4)]
        ax2.barh([p[0] for p in parts], [4, 4], color=COLORS["base"], label="4-bit codes")
        ax2.barh([p[0] for p in parts], [p[1] for p in parts], left=4, color=COLORS["qlora"],
                 label="scales")  # fmt: skip
        for i, (_, extra) in enumerate(parts):
            ax2.text(4 + extra + 0.05, i, f"{4 + extra:.3f} bits", va="center")
        ax2.set(xlabel="bits per weight", xlim=(0, max(r["bits"] for r in rows) + 1.2))
        ax2.legend(loc="upper right")
        plt.tight_layout()
        plt.show()

    sizes = [row["blocksize"] for row in rows]
    value = 64 if 64 in by_size else sizes[0]
    return slider_plot(draw, blocksize=choice_slider("NF4 blocksize", sizes, value=value))


def lora_scale_slider(scales, accuracies: dict[str, list[float]], colors: dict[str, str]):
    """Chapter 04: drag t and apply t·ΔW (t = 0 is the base, t = 1 the trained adapter).

    ``accuracies[task][i]`` is the accuracy on ``task`` with ΔW scaled by ``scales[i]``,
    precomputed; ``colors[task]`` is the task's line colour.
    """
    scales = [round(float(s), 3) for s in scales]

    def draw(t):
        i = scales.index(t)
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for task, acc in accuracies.items():
            ax.plot(scales, acc, "o-", ms=3, color=colors[task], label=f"{task}: {acc[i]:.1%}")
        ax.axvline(t, color="black", lw=1)
        ax.set(xlabel="t (the model uses W0 + t·ΔW)", ylabel="validation accuracy", ylim=(0, 1))
        ax.legend(loc="center right")
        plt.show()

    value = 1.0 if 1.0 in scales else None
    return slider_plot(draw, t=choice_slider("t · ΔW", scales, value=value))


def rank_slider(
    sweep: dict, truncation: dict, energy: dict, colors: dict, metric: str = "val accuracy"
) -> widgets.VBox:
    """Chapter 07: drag r and see the LoRA sweep, the truncated full fine-tune and ΔW's energy.

    ``sweep`` is ``summarize(rows, metric)`` (``{r or "full": (mean, min, max, trainable)}``),
    ``truncation`` maps every r to the metric of W0 + (ΔW_full truncated to rank r), and
    ``energy`` maps layer names to ``energy_captured(ΔW)``. All precomputed: a redraw only plots.
    """
    ranks = sorted(r for r in sweep if r != "full")
    trunc_r = sorted(truncation)

    def draw(r):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
        mean = [sweep[k][0] for k in ranks]
        err = [
            [sweep[k][0] - sweep[k][1] for k in ranks],
            [sweep[k][2] - sweep[k][0] for k in ranks],
        ]
        ax1.errorbar(ranks, mean, yerr=err, marker="o", color=colors["lora"], capsize=3,
                     label="LoRA at rank r (mean, min–max)")  # fmt: skip
        ax1.plot(trunc_r, [truncation[k] for k in trunc_r], color=colors["other"],
                 label="full fine-tune, ΔW cut to rank r")  # fmt: skip
        ax1.axhline(sweep["full"][0], color=colors["full"], ls="--", label="full fine-tuning")
        ax1.axvline(r, color="k", lw=0.8)
        if r in sweep:
            ax1.plot([r], [sweep[r][0]], "o", ms=12, mfc="none", mec="k")
        title = f"r = {r}: LoRA {_fmt(sweep.get(r))}, cut ΔW {truncation[r]:.3f}"
        ax1.set(xscale="log", xlabel="rank r", ylabel=metric, title=title)
        ax1.set_xticks(ranks, [str(k) for k in ranks])
        ax1.legend(fontsize=8, loc="lower right")
        for name, e in energy.items():
            ax2.plot(range(1, len(e) + 1), e, label=name)
            ax2.plot([r], [e[min(r, len(e)) - 1]], "o", color="k")
        ax2.axvline(r, color="k", lw=0.8)
        ax2.set(xscale="log", xlabel="top-r singular directions of ΔW_full", ylim=(0, 1.02))
        held = ", ".join(f"{name} {e[min(r, len(e)) - 1]:.2f}" for name, e in energy.items())
        ax2.set(ylabel="fraction of ‖ΔW‖²", title=f"energy the top {r} hold: {held}")
        ax2.legend(fontsize=8)
        fig.tight_layout()
        plt.show()

    options = [r for r in trunc_r if r >= 1]
    return slider_plot(draw, r=choice_slider("rank r", options, value=8 if 8 in options else None))


def _fmt(stat) -> str:
    return "—" if stat is None else f"{stat[0]:.3f}"


def matched_forgetting_slider(
    runs: Sequence[dict], base_source: float, levels: Sequence[float], colors: dict
) -> widgets.VBox:
    """Chapter 08: drag the matched target loss L; see each method's forgetting on reaching it.

    ``runs`` are ``minilora.forgetting.finetune`` results (several seeds per label), ``colors``
    maps each label to a colour. Forgetting at every level is computed before the widget exists.
    """
    import math

    from minilora.forgetting import forgetting_at

    levels = [round(float(level), 3) for level in levels]
    if not levels:
        raise ValueError("matched_forgetting_slider needs at least one target level")
    table = {level: forgetting_at(runs, level, base_source) for level in levels}
    reached = [v for rows in table.values() for v in rows.values() if not math.isnan(v[0])]
    xlim = (min(0.0, *(v[1] for v in reached)), max(0.0, *(v[2] for v in reached)) * 1.1 + 0.01)

    def draw(level):
        rows = table[level]
        labels = list(rows)[::-1]  # first label on top
        fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(labels) + 1.0))
        for i, label in enumerate(labels):
            mean, lo, hi = rows[label]
            if math.isnan(mean):  # this method never learned that much
                ax.text(0.002, i, "never reached L", va="center", fontsize=8)
            else:
                ax.barh(i, mean, xerr=[[mean - lo], [hi - mean]], color=colors[label], capsize=2)
        ax.set_yticks(range(len(labels)), labels)
        ax.set(xlim=xlim, title=f"forgetting when the code loss first reaches L = {level:.3f}")
        ax.set_xlabel("Δ prose val loss on reaching L (nats/char; mean, min–max over seeds)")
        fig.tight_layout()
        plt.show()

    return slider_plot(draw, level=choice_slider("matched code loss L", levels))
