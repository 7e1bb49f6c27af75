"""Tables and figures for `llm4seg demo`, `ablate` and `study` (matplotlib, written as PNG).

Files are written to a temporary name next to the target and renamed over it, so a full disk or an
interrupted run leaves the previous version of a table intact.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
    """pyplot on the Agg backend, in matplotlib's default style (nnU-Net's logger sets a global seaborn theme)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.style.use("default")
    return plt


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (temporary file, then rename); the target is untouched on failure."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def _save(figure, path: Path) -> None:
    """Save a figure atomically (see write_text)."""
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        figure.savefig(temporary, dpi=110)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return float("nan"), float("nan")
    return float(np.mean(finite)), float(np.std(finite))


def plot_training_curves(curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    """One panel each for train loss, validation loss and EMA pseudo Dice; one line per method."""
    plt = _pyplot()

    panels = (("train_losses", "train loss"), ("val_losses", "validation loss"), ("ema_fg_dice", "EMA pseudo Dice"))
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for axis, (key, title) in zip(axes, panels):
        for method, values in curves.items():
            axis.plot(range(1, len(values[key]) + 1), values[key], label=method)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)


def _overlay(axis, image: np.ndarray, mask: np.ndarray | None, colour: str) -> None:
    axis.imshow(image, cmap=None if image.ndim == 3 else "gray")
    if mask is not None and mask.any():
        axis.contour(mask > 0, levels=[0.5], colors=colour, linewidths=1.2)
    axis.set_xticks([])
    axis.set_yticks([])


def plot_overlays(images: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                  predictions: dict[str, Sequence[np.ndarray]], case_names: Sequence[str], path: Path) -> None:
    """A grid: one row per case; columns image, ground truth, then each method's prediction (contours)."""
    plt = _pyplot()

    columns = 2 + len(predictions)
    figure, axes = plt.subplots(len(images), columns, figsize=(2.4 * columns, 2.4 * len(images)), squeeze=False)
    colours = ["tab:orange", "tab:cyan", "tab:pink", "tab:olive", "tab:purple"]
    for row, (image, truth, name) in enumerate(zip(images, truths, case_names)):
        _overlay(axes[row, 0], image, None, "")
        axes[row, 0].set_ylabel(name, fontsize=7)
        _overlay(axes[row, 1], image, truth, "tab:green")
        for column, (method, masks) in enumerate(predictions.items(), start=2):
            _overlay(axes[row, column], image, masks[row], colours[(column - 2) % len(colours)])
    for column, title in enumerate(["image", "ground truth", *predictions]):
        axes[0, column].set_title(title, fontsize=8)
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)


def plot_per_case(values: dict[str, Sequence[float]], metric: str, path: Path) -> None:
    """Box plot of a per-case metric, one box per row of a table."""
    plt = _pyplot()

    figure, axis = plt.subplots(figsize=(1.6 + 1.3 * len(values), 3.6))
    data = [[v for v in row if not math.isnan(v)] for row in values.values()]
    axis.boxplot(data, showmeans=True)
    axis.set_xticks(range(1, len(values) + 1), list(values), rotation=20, ha="right", fontsize=8)
    axis.set_ylabel(f"per-case {metric}")
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)


def plot_differences(differences: dict[str, Sequence[float]], metric: str, path: Path) -> None:
    """Per-case differences against the baseline: one box with its cases as points per row, a line at 0."""
    plt = _pyplot()

    figure, axis = plt.subplots(figsize=(1.6 + 1.3 * max(1, len(differences)), 3.6))
    data = [list(values) for values in differences.values()]
    if data:
        axis.boxplot(data, showmeans=True)
        jitter = np.random.default_rng(0)
        for position, values in enumerate(data, start=1):
            axis.scatter(position + jitter.uniform(-0.12, 0.12, len(values)), values, s=8, alpha=0.5)
        axis.set_xticks(range(1, len(data) + 1), list(differences), rotation=20, ha="right", fontsize=8)
    else:
        axis.text(0.5, 0.5, "no row to compare with a baseline", ha="center", va="center", transform=axis.transAxes)
    axis.axhline(0.0, color="black", linewidth=0.8)
    axis.set_ylabel(f"per-case {metric}")
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)
