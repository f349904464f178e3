"""Depth PNG readers: 16-bit grey PNG in mm (ICVL, HANDS2017) and NYU's RGB PNG with depth = B + 256 G."""

from __future__ import annotations

import numpy as np
from PIL import Image, UnidentifiedImageError

from v2v_jax.data.base import UNREADABLE, DataError


def _open(path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: cannot read PNG ({error})", UNREADABLE) from None


def read_png_uint16(path) -> np.ndarray:
    """A single-channel 16-bit PNG of depth in mm, as float32."""
    pixels = _open(path)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint16, np.int32):
        raise DataError(f"{path}: expected a single-channel 16-bit depth PNG, got {pixels.dtype} {pixels.shape}",
                        UNREADABLE)
    return pixels.astype(np.float32)


def read_png_nyu(path) -> np.ndarray:
    """NYU depth: an RGB PNG whose depth in mm is B + 256 G, as float32."""
    pixels = _open(path)
    if pixels.ndim != 3 or pixels.shape[2] < 3 or pixels.dtype != np.uint8:
        raise DataError(f"{path}: expected an 8-bit RGB PNG (NYU depth = B + 256 G), got {pixels.dtype} "
                        f"{pixels.shape}", UNREADABLE)
    return (pixels[..., 2].astype(np.float32) + 256 * pixels[..., 1].astype(np.float32))
