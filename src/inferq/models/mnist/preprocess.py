"""Turn any image of a handwritten digit into what MNIST looks like. numpy and Pillow only.

MNIST digits are light on a dark background, 28x28, the ink's bounding box scaled
(keeping the aspect ratio, anti-aliased) so its longer side is 20 px, and pasted so the
centre of mass of the ink is at the centre, pixel (14, 14). A person drawing on a canvas
makes the opposite: a dark digit, anywhere, on a large light (or transparent) canvas.
:func:`to_mnist` maps both to the same array; the training script runs the MNIST images
through it too, so the network sees at serving time exactly what it saw in training.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from PIL import Image

#: Mean and standard deviation of MNIST pixels in [0, 1], used by :func:`normalize`.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
#: Side of an MNIST image, and of the box the ink is scaled into.
SIZE = 28
BOX = 20

# Decode huge uploads at a reduced size first: a 20x20 digit needs nothing like 4k pixels,
# and full-size float copies of a phone photo would cost hundreds of MB per image.
_MAX_SIDE = 1024
# Below this contrast (ink peak minus background, in [0, 1]) the image is blank: JPEG
# noise or a faint scan must not be stretched into a "digit".
_MIN_CONTRAST = 0.1
# Ink fainter than this (after stretching to [0, 1]) does not count towards the bounding
# box, so compression noise around the strokes does not shrink the digit.
_INK_THRESHOLD = 0.1
# Rec. 601 luma, what Pillow's own "L" conversion uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

FloatArray = NDArray[np.float32]


def to_mnist(img: Image.Image) -> FloatArray:
    """An MNIST-style (28, 28) float32 array in [0, 1] (light digit on dark) from ``img``.

    Any size, any mode (RGB, RGBA, L, LA, P, 1, ...), the first frame of an animation.
    The polarity is decided from the border, so a dark digit on a light canvas works as
    well as a light one on dark; transparent pixels count as background. A blank image
    gives all zeros.
    """
    gray = _grayscale(img)
    ink = _light_on_dark(gray)
    if ink is None:
        return np.zeros((SIZE, SIZE), dtype=np.float32)
    return _center(ink)


def normalize(images: NDArray[np.floating]) -> FloatArray:
    """Standardise arrays from :func:`to_mnist` with MNIST's mean and std, as in training."""
    return ((np.asarray(images, dtype=np.float32) - MNIST_MEAN) / MNIST_STD).astype(np.float32)


def _grayscale(img: Image.Image) -> FloatArray:
    """The image as a 2-D float32 array in [0, 1], transparency composited onto background."""
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        arr = np.asarray(img, dtype=np.float32)
        span = float(arr.max() - arr.min())
        return (arr - arr.min()) / span if span > 0 else np.zeros_like(arr)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    img = img.convert("RGBA" if has_alpha else "L")
    if max(img.size) > _MAX_SIDE:
        img = img.reduce(math.ceil(max(img.size) / _MAX_SIDE))
    if not has_alpha:
        return np.asarray(img, dtype=np.float32) / 255.0
    rgba = np.asarray(img, dtype=np.float32) / 255.0
    luma = rgba[..., :3] @ _LUMA
    alpha = rgba[..., 3]
    visible = float(alpha.sum())
    if visible < 1e-6:
        return np.zeros_like(luma)
    # What is visible is mostly the strokes (a canvas export is transparent everywhere
    # else), so the background is whichever of black or white contrasts with them; the
    # colour stored under transparent pixels is arbitrary and must be ignored.
    ink_luma = float((luma * alpha).sum()) / visible
    background = 1.0 if ink_luma < 0.5 else 0.0
    composited: FloatArray = (luma * alpha + background * (1.0 - alpha)).astype(np.float32)
    return composited


def _light_on_dark(gray: FloatArray) -> FloatArray | None:
    """Ink in [0, 1] on a 0 background, inverted if the digit was dark; None if blank."""
    height, width = gray.shape
    margin = max(1, round(0.05 * min(height, width)))
    border = np.concatenate(
        [
            gray[:margin].ravel(),
            gray[-margin:].ravel(),
            gray[:, :margin].ravel(),
            gray[:, -margin:].ravel(),
        ]
    )
    background = float(np.median(border))
    low, high = float(gray.min()), float(gray.max())
    # The ink is the extreme farther from the background: this holds for grey paper and
    # for digits that touch the border, where "is the border bright?" alone would not.
    if background > (low + high) / 2:
        gray = 1.0 - gray
        background = 1.0 - background
    peak = float(gray.max())
    if peak - background < _MIN_CONTRAST:
        return None
    ink: FloatArray = np.clip((gray - background) / (peak - background), 0.0, 1.0)
    return ink.astype(np.float32)


def _center(ink: FloatArray) -> FloatArray:
    """Crop to the ink, scale its longer side to 20 px, centre its mass in 28x28."""
    rows = np.flatnonzero((ink > _INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink > _INK_THRESHOLD).any(axis=0))
    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    if rows.size == 0:
        return out
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = crop.shape
    scale = BOX / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    # Lanczos on a float image anti-aliases when shrinking and rings a little (clipped).
    patch = np.asarray(
        Image.fromarray(crop, mode="F").resize((new_w, new_h), Image.Resampling.LANCZOS),
        dtype=np.float32,
    ).clip(0.0, 1.0)
    mass = float(patch.sum())
    if mass <= 0.0:
        return out
    # MNIST strokes peak at full intensity; thin strokes shrunk a lot would not.
    patch /= patch.max()
    ys, xs = np.indices(patch.shape)
    top = round(SIZE / 2 - float((ys * patch).sum()) / mass)
    left = round(SIZE / 2 - float((xs * patch).sum()) / mass)
    # Paste with clipping: a lopsided digit can put part of its box outside the frame.
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(SIZE, top + new_h), min(SIZE, left + new_w)
    if y0 < y1 and x0 < x1:
        out[y0:y1, x0:x1] = patch[y0 - top : y1 - top, x0 - left : x1 - left]
    return out
