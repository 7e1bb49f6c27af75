"""Reading 2D source files: broken files as clean errors, what an image holds, and the mask binarisation rule.

Masks become boolean lesion masks, decided from each file's own values, never from a fixed threshold alone:

* Lossy masks (JPEG) are thresholded: lesion where the brightest colour channel is above 127. A JPEG mask whose
  brightest value lies between 33 and 127 is refused (a 0/1 or 0/100 mask saved as JPEG would become empty);
  one that stays at 32 or below is compression noise around black: an empty mask.
* Lossless masks (PNG, BMP, TIFF, any bit depth) are read as levels: grey values, colours, or palette indices.
  Fully transparent pixels form one level of their own. The background level is, in this order: the
  transparent pixels; palette index 0 (a palette's index 0 is its background whatever colour it is shown in);
  the darkest level (lowest value; for colours the lowest luma 0.299 R + 0.587 G + 0.114 B). Exactly one other
  level is the lesion: {0, v} gives v -> 1 for any v, {0, 1, 2} is refused as ambiguous for a binary dataset.
  A mask holding only its background is empty; a mask of one level that is not black, transparent or palette
  index 0 is refused (it cannot tell lesion from background).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from nnunetv2_llm4seg.converters.layout import ConversionError, listing

LOSSY_SUFFIXES = (".jpg", ".jpeg")
LOSSY_THRESHOLD = 127
LOSSY_NOISE = 32  # a JPEG mask whose brightest value is at most this is an empty mask with compression noise
GRAY_TOLERANCE = 2.0  # mean |channel - mean of the channels| in grey levels below which RGB counts as grayscale
WIDE_MODES = ("I", "F")  # 32-bit integer and float images
TRANSPARENT = -1  # level of fully transparent mask pixels


@contextmanager
def _readable(path: Path) -> Iterator[None]:
    """Turn PIL's errors for one source file into a ConversionError that names the file and the fix."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ConversionError(f"{path} is refused as a possible decompression bomb ({exc}); a genuine image this "
                              f"large must be downscaled before conversion, otherwise remove the file") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ConversionError(f"cannot read {path}: {exc}. The file is truncated, corrupted or not an image: "
                              f"download it again or remove it from the source") from None


def image_size(path: Path) -> tuple[int, int]:
    """Width and height from the file header."""
    with _readable(path), Image.open(path) as img:
        return img.size


def load(path: Path) -> Image.Image:
    """The decoded image (all pixels read, so truncated files fail here)."""
    with _readable(path), Image.open(path) as img:
        img.load()
    return img


# ---------------------------------------------------------------- images

@dataclass(frozen=True)
class ImageFacts:
    """What one source image holds: colour or grayscale, and whether it needs more than 16 unsigned bits."""

    colour: bool
    high_depth: bool  # 16-bit, 32-bit integer or float grayscale
    wide: bool  # float, negative or above 65535: only TIFF keeps it


def _is_gray(rgb: np.ndarray) -> bool:
    """True when the three channels agree within GRAY_TOLERANCE (JPEG noise), on a grid of at most ~512x512 pixels."""
    step_y, step_x = max(1, rgb.shape[0] // 512), max(1, rgb.shape[1] // 512)
    sample = rgb[::step_y, ::step_x].astype(np.float32)
    return float(np.abs(sample - sample.mean(axis=-1, keepdims=True)).mean()) < GRAY_TOLERANCE


def _raw_mode(img: Image.Image) -> str:
    """How the file stores its pixels (PIL names 16-bit colour PNGs 'RGB;16B' although it decodes them to 8 bits)."""
    return str(img.tile[0].args) if img.tile and isinstance(img.tile[0].args, str) else img.mode


def inspect_image(path: Path) -> ImageFacts:
    """Decode one image and say what it holds; refuses 16-bit colour and non-finite values, giving the reason."""
    with _readable(path), Image.open(path) as img:
        raw_mode = _raw_mode(img)
        img.load()
    if img.mode in WIDE_MODES or img.mode.startswith("I;16"):
        values = np.asarray(img)
        if not np.isfinite(values).all():
            raise ConversionError(f"{path} holds NaN or infinite values: nnU-Net cannot normalise them; replace them "
                                  f"with finite values (e.g. the image minimum) and convert again")
        wide = values.dtype.kind == "f" or int(values.min()) < 0 or int(values.max()) > 65535
        return ImageFacts(colour=False, high_depth=True, wide=wide)
    if ";16" in raw_mode:
        raise ConversionError(f"{path} is a 16-bit colour image ({raw_mode}), which PIL decodes to 8 bits only: save "
                              f"it as 16-bit grayscale if its colour carries nothing, or as 8-bit RGB")
    if img.mode in ("1", "L", "LA"):
        return ImageFacts(colour=False, high_depth=False, wide=False)
    return ImageFacts(colour=not _is_gray(np.asarray(img.convert("RGB"))), high_depth=False, wide=False)


def image_array(path: Path, colour: bool, keep_wide: bool) -> np.ndarray:
    """HxWx3 uint8 for a colour dataset; otherwise HxW in the image's own depth (uint8, uint16, or with
    `keep_wide` int32/float32), values unchanged. Alpha is dropped."""
    img = load(path)
    if colour:
        return np.asarray(img.convert("RGB"))
    if img.mode in WIDE_MODES or img.mode.startswith("I;16"):
        values = np.asarray(img)
        return values if keep_wide else values.astype(np.uint16)
    return np.asarray(img.convert("L"))


# ---------------------------------------------------------------- masks

def _lossy_mask(img: Image.Image, path: Path) -> np.ndarray:
    """JPEG mask: lesion above LOSSY_THRESHOLD on the brightest channel; refuses masks that peak below it."""
    values = np.asarray(img.convert("L") if img.mode in ("1", "L") else img.convert("RGB"))
    brightest = values if values.ndim == 2 else values.max(axis=-1)
    peak = int(brightest.max())
    if LOSSY_NOISE < peak <= LOSSY_THRESHOLD:
        raise ConversionError(f"JPEG mask {path} is brightest at {peak}: lossy masks are thresholded at "
                              f"{LOSSY_THRESHOLD}, so it would become empty. Its lesion value is probably {peak} "
                              f"instead of 255: save the masks losslessly (PNG) or with lesion = 255")
    return brightest > LOSSY_THRESHOLD


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of (..., 3) colours."""
    return rgb @ np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class _Levels:
    """A lossless mask's pixels as levels, the levels it uses (TRANSPARENT included), and per opaque level its
    name in messages and its brightness."""

    values: np.ndarray
    used: list[float]
    names: dict[float, str]
    brightness: dict[float, float]


def _distinct(values: np.ndarray) -> list[float]:
    """Sorted distinct values; counting is much faster than sorting for 8- and 16-bit masks."""
    if values.dtype.kind in "ub" and values.dtype.itemsize <= 2:
        return [float(v) for v in np.flatnonzero(np.bincount(values.ravel()))]
    return [float(v) for v in np.unique(values)]


def _palette_levels(img: Image.Image) -> _Levels:
    """Palette mask: levels are the indices; transparent pixels are TRANSPARENT."""
    data = np.asarray(img)
    indices = data[..., 0] if data.ndim == 3 else data
    alpha = data[..., 1] if data.ndim == 3 else None
    transparency = img.info.get("transparency")
    if isinstance(transparency, bytes):
        alpha = np.pad(np.frombuffer(transparency, np.uint8), (0, 256), constant_values=255)[indices]
    elif isinstance(transparency, int):
        alpha = np.where(indices == transparency, 0, 255)
    colours = np.array((img.getpalette("RGB") or []) + [0] * 768, dtype=np.float64)[:768].reshape(256, 3)
    values = indices if alpha is None else np.where(alpha == 0, TRANSPARENT, indices)
    used = _distinct(values)
    opaque = [int(i) for i in used if i != TRANSPARENT]
    return _Levels(values, used, {i: f"index {i} {tuple(int(c) for c in colours[i])}" for i in opaque},
                   {i: float(_luma(colours[i])) for i in opaque})


def _direct_levels(img: Image.Image) -> _Levels:
    """Grey or colour mask: levels are grey values or colours packed as integers; transparent pixels are
    TRANSPARENT."""
    if img.mode in ("1", "L", "I", "F") or img.mode.startswith("I;16"):
        values = np.asarray(img)
        used = _distinct(values)
        return _Levels(values, used, {v: f"{v:g}" for v in used}, {v: v for v in used})
    rgba = np.asarray(img.convert("LA" if img.mode == "LA" else "RGBA")).astype(np.int64)
    colour, alpha = rgba[..., :-1], rgba[..., -1]
    gray = colour.shape[-1] == 1
    packed = colour[..., 0] if gray else (colour[..., 0] << 16) | (colour[..., 1] << 8) | colour[..., 2]
    values = np.where(alpha == 0, TRANSPARENT, packed)
    used = _distinct(values)
    opaque = [int(v) for v in used if v != TRANSPARENT]
    if gray:
        return _Levels(values, used, {v: str(v) for v in opaque}, {v: float(v) for v in opaque})
    rgb = {v: ((v >> 16) & 255, (v >> 8) & 255, v & 255) for v in opaque}
    return _Levels(values, used, {v: str(c) for v, c in rgb.items()},
                   {v: float(_luma(np.array(c, np.float64))) for v, c in rgb.items()})


def _lossless_mask(img: Image.Image, path: Path) -> np.ndarray:
    """Lossless mask: background and exactly one lesion level (rule in the module docstring)."""
    palette = img.mode in ("P", "PA")
    levels = (_palette_levels if palette else _direct_levels)(img)
    names = {TRANSPARENT: "transparent", **levels.names}
    if TRANSPARENT in levels.used:
        background = TRANSPARENT
    elif palette and 0 in levels.used:
        background = 0
    else:
        background = min(levels.used, key=levels.brightness.__getitem__)
    lesion = [level for level in levels.used if level != background]
    shown = [names[level] for level in levels.used]
    if len(lesion) > 1:
        raise ConversionError(f"mask {path} holds {len(shown)} levels ({listing(shown)}); a binary dataset needs "
                              f"exactly two, the background ({names[background]}) and one lesion value. Give "
                              f"every lesion pixel one value (e.g. 255) and save the mask again")
    if not lesion and background not in (TRANSPARENT, 0) and levels.brightness[background] > 0:
        raise ConversionError(f"mask {path} is uniformly {shown[0]}: one level cannot tell lesion from background. "
                              f"Save an empty mask as 0 (black), or a lesion on a background of 0")
    return levels.values == lesion[0] if lesion else np.zeros(levels.values.shape, bool)


def read_mask(path: Path) -> np.ndarray:
    """Boolean lesion mask of one mask file (rule in the module docstring)."""
    img = load(path)
    if path.suffix.lower() in LOSSY_SUFFIXES:
        return _lossy_mask(img, path)
    return _lossless_mask(img, path)


def read_label(masks: tuple[Path, ...]) -> np.ndarray:
    """One case's lesion mask: its mask files merged with a logical OR."""
    return np.logical_or.reduce([read_mask(mask) for mask in masks])
