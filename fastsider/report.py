"""Benchmark and comparison reports: markdown tables, JSON, PNG plots, and the terminal table.

Pure formatting: every number comes from the caller's measurements.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.3g}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for h in headers:
        table.add_column(h)
    for row in rows:
        table.add_row(*(fmt(v, digits) for v in row))
    Console(stderr=True).print(table)


def plot_cumulative(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, max_value: float, xlabel: str,
                    title: str) -> None:
    """Cumulative error curves, one line per label: (thresholds [n], fraction of points below each [n])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, (x, frac) in curves.items():
        ax.plot(x, 100.0 * frac, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("points below error [%]")
    ax.set_xlim(0, max_value)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def image_panel(images: Sequence[tuple[str, np.ndarray]], path: Path, title: str = "",
                colorbar_max: float | None = None) -> None:
    """Labelled pictures side by side (RGB in [0, 1] / uint8, or 2-D error maps drawn with a colour bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 3.6), dpi=110, squeeze=False)
    for ax, (label, img) in zip(axes[0], images):
        if img.ndim == 2:
            shown = ax.imshow(np.ma.masked_invalid(img), cmap="magma", vmin=0, vmax=colorbar_max)
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        else:
            ax.imshow(img)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def image_grid(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], path: Path, cell_in: float = 3.0) -> None:
    """Rows of labelled RGB pictures ([H, W, 3] in [0, 1] or uint8), each row titled: one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cols = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(cell_in * n_cols, cell_in * len(rows) + 0.3), dpi=110,
                             squeeze=False)
    for r, (title, images) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(images):
                label, img = images[c]
                ax.imshow(img)
                ax.set_title(f"{title}: {label}" if c == 0 else label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
