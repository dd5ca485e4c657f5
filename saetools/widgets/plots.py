"""Matplotlib figures of tidy patching / circuit tables (data in, figure out; renders offline)."""

from __future__ import annotations

import pandas as pd

__all__ = ["heatmap", "scatter_roles"]


def _check_table(df: pd.DataFrame, columns: list[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame) or df.empty:
        raise ValueError(f"{what} needs a non-empty DataFrame, got "
                         f"{'an empty one' if isinstance(df, pd.DataFrame) else type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: the table has no columns {missing}; it has {list(df.columns)}")


def heatmap(df: pd.DataFrame, *, index: str, columns: str, values: str, title: str,
            label: str | None = None, ax=None, cmap: str = "RdBu", center: float = 0.0):
    """A diverging heatmap of ``df.pivot(index, columns, values)``, annotated with values.

    Args:
        df: a tidy table (e.g. from :mod:`saetools.circuits.patching`).
        index, columns, values: column names for rows, columns and colour.
        title: the figure title; ``label`` the colour-bar label (defaults to ``values``).
        ax: an existing axis (default: a new figure).
        cmap, center: colour map and the value shown white.
    """
    import matplotlib.pyplot as plt

    _check_table(df, [index, columns, values], "heatmap")
    grid = df.pivot(index=index, columns=columns, values=values)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 + 0.6 * grid.shape[1], 0.8 + 0.45 * grid.shape[0]))
    span = max(abs(grid.to_numpy().min() - center), abs(grid.to_numpy().max() - center), 1e-9)
    im = ax.imshow(grid.to_numpy(), cmap=cmap, vmin=center - span, vmax=center + span, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index])
    ax.set_xlabel(columns)
    ax.set_ylabel(index)
    ax.set_title(title, fontsize=10)
    if grid.size <= 200:
        for (i, j), v in pd.DataFrame(grid.to_numpy()).stack().items():
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    ax.figure.colorbar(im, ax=ax, label=label or values)
    return ax.figure


def scatter_roles(df: pd.DataFrame, *, x: str, y: str, title: str, role: str = "roles", ax=None):
    """Scatter of one point per head (``L{layer}H{head}`` labels), coloured by role."""
    import matplotlib.pyplot as plt

    _check_table(df, [x, y, role, "layer", "head"], "scatter_roles")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    roles = df[role].replace("", "other")
    for r in sorted(roles.unique()):
        sel = df[roles == r]
        ax.scatter(sel[x], sel[y], label=r, s=30)
        for _, row in sel.iterrows():
            if r != "other":
                ax.annotate(f"L{row.layer}H{row['head']}", (row[x], row[y]), fontsize=7)
    lim = max(df[x].max(), df[y].max()) * 1.05
    ax.plot([0, lim], [0, lim], ls=":", c="grey")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return ax.figure
