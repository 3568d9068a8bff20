"""Pictures logged beside the numbers: training curves as PNG (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curves_png(series: dict[str, list[tuple[int, float]]], path: Path, title: str) -> Path:
    """One line per named series of (step, value) points, log-scaled when all values are positive."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, points in sorted(series.items()):
        if points:
            steps, values = zip(*sorted(points))
            ax.plot(steps, values, label=name, linewidth=1.2)
    values = [v for points in series.values() for _, v in points]
    if values and min(values) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
