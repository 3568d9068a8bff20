"""Pictures logged beside the numbers: training curves, quality curves and sigma panels as PNG (matplotlib,
headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

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


def threshold_curve_png(curves: dict[str, list[dict[str, float]]], path: Path, title: str) -> Path:
    """Precision (solid) and recall (dashed) against the share of pseudo instances kept, per split,
    each point one alignment-score threshold (from `xpl.eval.pseudo_quality.threshold_curve`)."""
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for (name, points), colour in zip(sorted(curves.items()), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        if not points:
            continue
        kept = [p["kept"] for p in points]
        ax.plot(kept, [p["precision"] for p in points], color=colour, label=f"{name} precision")
        if all(p["recall"] is not None for p in points):
            ax.plot(kept, [p["recall"] for p in points], color=colour, linestyle="--", label=f"{name} recall")
    ax.set_xlabel("share of pseudo instances kept (alignment score >= threshold)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def sigma_panels_png(rows: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    """One row per class: the image around a pseudo instance, its pseudo mask, the truth and sigma on the box's
    mask grid. Each row gives `image` (HxWx3 uint8 crop), `pseudo`, `truth` (bool MxM), `sigma` (float MxM) and a
    `label`; sigma shares one colour scale over the rows."""
    names = list(rows)
    top = max(float(np.max(r["sigma"])) for r in rows.values())
    fig, axes = plt.subplots(len(names), 4, figsize=(8, 2 * len(names)), dpi=80, squeeze=False)
    for row_axes, name in zip(axes, names):
        row = rows[name]
        panels = ((row["image"], None, row["label"]), (row["pseudo"], "gray", "pseudo mask"),
                  (row["truth"], "gray", "truth"), (row["sigma"], "magma", "sigma"))
        for ax, (picture, cmap, text) in zip(row_axes, panels):
            shown = ax.imshow(picture, cmap=cmap, vmin=0 if cmap == "magma" else None, vmax=top if cmap == "magma"
                              else None, interpolation="nearest")
            ax.set_title(text, fontsize=8)
            ax.axis("off")
        fig.colorbar(shown, ax=row_axes[-1], fraction=0.046)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
