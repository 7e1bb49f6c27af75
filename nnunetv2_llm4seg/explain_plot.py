"""The picture of `llm4seg explain`: token maps upsampled to the tile and overlaid on the image (one slice in 3D)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from nnunetv2_llm4seg.explanation import Explanation

HEAD_COLUMNS = 6
PANEL_INCHES = 2.4
OVERLAY_ALPHA = 0.55
MAP_COLORS = "inferno"


def upsample(token_map: np.ndarray, grid: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """(N,) values per token -> the tile's voxel grid, each token filling its own cell (nearest)."""
    values = torch.from_numpy(np.asarray(token_map, dtype=np.float32).reshape(grid))[None, None]
    return F.interpolate(values, size=shape, mode="nearest").numpy()[0, 0]


def display_slice(explanation: Explanation, requested: int | None) -> int | None:
    """For 3D tiles the index along the first axis that is shown: --slice, else the query token's centre."""
    if explanation.image.ndim == 2:
        return None
    depth = explanation.image.shape[0]
    if requested is not None:
        return requested
    cell = depth / explanation.grid[0]
    return min(int((explanation.query[0] + 0.5) * cell), depth - 1)


def _plane(volume: np.ndarray, index: int | None) -> np.ndarray:
    return volume if index is None else volume[index]


def _query_point(explanation: Explanation) -> tuple[float, float]:
    """(x, y) pixel position of the query token's centre in the shown plane."""
    shape, grid, query = explanation.image.shape[-2:], explanation.grid[-2:], explanation.query[-2:]
    return tuple((q + 0.5) * s / g - 0.5 for q, s, g in zip(reversed(query), reversed(shape), reversed(grid)))


def _image(ax: Axes, image: np.ndarray, title: str) -> None:
    ax.imshow(image, cmap="gray")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _overlay(ax: Axes, image: np.ndarray, values: np.ndarray, title: str, figure: Figure,
             colorbar: bool = True) -> None:
    _image(ax, image, title)
    shown = ax.imshow(values, cmap=MAP_COLORS, alpha=OVERLAY_ALPHA, vmin=0)
    if colorbar:
        figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)


def _contours(ax: Axes, prediction: np.ndarray, reference: np.ndarray | None) -> None:
    if prediction.any():
        ax.contour(prediction.astype(float), levels=[0.5], colors="red", linewidths=1)
    if reference is not None and reference.any():
        ax.contour(reference.astype(float), levels=[0.5], colors="lime", linewidths=1, linestyles="dashed")


def plot_explanation(explanation: Explanation, path: Path, slice_index: int | None = None) -> Path:
    """Top row: image with predicted (red) and reference (green, dashed) contours, the query token's attention
    (head mean), attention received per token, |booster(f) - f| per token, and the gate per channel for gated
    rows; below: the query token's attention per head."""
    attention = explanation.attention()
    heads = attention.shape[0]
    shape = explanation.image.shape
    index = display_slice(explanation, slice_index)
    image = _plane(explanation.image, index)
    prediction = _plane(explanation.prediction, index)
    reference = None if explanation.reference is None else _plane(explanation.reference, index)

    def token_plane(values: np.ndarray) -> np.ndarray:
        return _plane(upsample(values, explanation.grid, shape), index)

    query_row = attention[:, explanation.query_index]
    top = 5 if explanation.gate is not None else 4
    columns = max(top, min(heads, HEAD_COLUMNS))
    head_rows = math.ceil(heads / columns)
    figure = Figure(figsize=(PANEL_INCHES * columns, PANEL_INCHES * (1 + head_rows) + 0.4), layout="constrained")
    axes = figure.subplots(1 + head_rows, columns, squeeze=False)
    where = f", slice {index}" if index is not None else ""
    figure.suptitle(f"{explanation.case}: {explanation.spec.family} layer {explanation.spec.layer}, attention "
                    f"{explanation.spec.attention}, positions {explanation.spec.positions}, tokens "
                    f"{'x'.join(map(str, explanation.grid))}{where}", fontsize=9)
    x, y = _query_point(explanation)

    _image(axes[0, 0], image, "prediction (red), reference (green)")
    _contours(axes[0, 0], prediction, reference)
    _overlay(axes[0, 1], image, token_plane(query_row.mean(0)), "query token's attention", figure)
    _overlay(axes[0, 2], image, token_plane(attention.mean(axis=(0, 1))), "attention received",
             figure)
    _overlay(axes[0, 3], image, token_plane(explanation.trace.contribution()[0].cpu().numpy()),
             "|booster(f) - f|", figure)
    for ax in axes[0, :4]:
        ax.plot([x], [y], marker="+", color="cyan", markersize=8)
    if explanation.gate is not None:
        axes[0, 4].bar(np.arange(explanation.gate.size), explanation.gate, color="tab:blue")
        axes[0, 4].set_title("gate per channel", fontsize=8)
        axes[0, 4].tick_params(labelsize=6)
    for ax in axes[0, top:]:
        ax.axis("off")

    for head, ax in enumerate(axes[1:].flat):
        if head >= heads:
            ax.axis("off")
            continue
        _overlay(ax, image, token_plane(query_row[head]), f"head {head}", figure, colorbar=False)
        ax.plot([x], [y], marker="+", color="cyan", markersize=6)
    figure.savefig(path, dpi=80)
    return path
