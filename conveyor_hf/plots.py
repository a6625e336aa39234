"""Pictures of timelines: decode rounds, tool units and exposed waits (matplotlib, PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from conveyor_hf.timeline import Timeline

DECODE, UNIT, FAILED, EXPOSED = "#4C72B0", "#DD8452", "#C44E52", "#C44E52"


def plot_timelines(timelines: Sequence[Timeline], path: str | Path, *, title: str | None = None) -> Path:
    """One panel per timeline, stacked (e.g. lazy above partial), on a shared time axis.

    Lanes: ``decode`` (one bar per round), one lane per tool call target (``row · tool``)
    with a bar per unit (red when it failed), and ``user waits`` for tool time during
    which nothing was decoded.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    heights = [2 + len(t.lanes()) for t in timelines]
    fig, axes = plt.subplots(
        len(timelines), 1, figsize=(11, 1.2 + 0.55 * sum(heights)), sharex=True, squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for ax, timeline in zip(axes[:, 0], timelines):
        _draw(ax, timeline)
    axes[-1, 0].set_xlabel("seconds since generate() was called")
    handles = [Patch(color=DECODE, label="decode"), Patch(color=UNIT, label="tool unit"),
               Patch(color=FAILED, label="failed unit"), Patch(facecolor="white", edgecolor=EXPOSED, hatch="///",
                                                               label="user waits for tools")]
    fig.legend(handles=handles, loc="upper right", ncol=4, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, x=0.01, ha="left", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _draw(ax, timeline: Timeline) -> None:
    """One panel: ``timeline``'s lanes on ``ax`` (a matplotlib Axes), titled with its summary."""
    t0 = timeline.start
    lanes = timeline.lanes()
    labels = ["decode"] + [name for name, _ in lanes] + ["user waits"]
    y = {name: len(labels) - 1 - i for i, name in enumerate(labels)}
    span = max(timeline.end - t0, 1e-6)
    min_width = span * 0.003  # keep very short units visible
    for rnd in timeline.rounds:
        ax.broken_barh([(rnd.start - t0, rnd.decode)], (y["decode"] - 0.35, 0.7), facecolor=DECODE,
                       edgecolor="white", linewidth=1.0)
    for name, units in lanes:
        for unit in units:
            if unit.start is None or unit.end is None:
                continue
            color = FAILED if unit.error and not unit.skipped else UNIT
            ax.broken_barh([(unit.start - t0, max(unit.end - unit.start, min_width))], (y[name] - 0.35, 0.7),
                           facecolor=color, edgecolor="white", linewidth=0.6)
    spans = [(b - t0, e - b) for b, e in timeline.exposed_intervals()]
    if spans:
        ax.broken_barh(spans, (y["user waits"] - 0.35, 0.7), facecolor="white", edgecolor=EXPOSED, hatch="///")
    summary = timeline.summary()
    ax.set_title(
        f"{timeline.mode}: latency {summary['latency']:.2f}s · decode {summary['decode']:.2f}s · "
        f"tool {summary['tool']:.2f}s · exposed tool {summary['exposed_tool']:.2f}s · ideal {summary['ideal']:.2f}s",
        fontsize=9, loc="left",
    )
    ax.set_yticks([y[name] for name in labels], labels, fontsize=8)
    ax.set_ylim(-0.7, len(labels) - 0.3)
    ax.grid(axis="x", alpha=0.3)
