"""Depth PNG readers: 16-bit grey PNG in mm (ICVL, HANDS2017) and NYU's RGB PNG with depth = B + 256 G."""

from __future__ import annotations

import numpy as np
from PIL import Image, UnidentifiedImageError

from v2v_jax.data.base import UNREADABLE, DataError


def _open(path, shape: tuple[int, int] | None) -> np.ndarray:
    """The pixels of a PNG; with `shape` (H, W), a header of another size is refused before decoding."""
    try:
        with Image.open(path) as image:
            if shape is not None and image.size != (shape[1], shape[0]):
                raise DataError(f"{path}: depth image is {image.size[0]}x{image.size[1]}, expected "
                                f"{shape[1]}x{shape[0]}", "wrong image size")
            image.load()
            return np.asarray(image)
    except DataError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: cannot read PNG ({error})", UNREADABLE) from None


def read_png_uint16(path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A single-channel 16-bit PNG of depth in mm, as float32 (of `shape` (H, W), if given)."""
    pixels = _open(path, shape)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint16, np.int32):
        raise DataError(f"{path}: expected a single-channel 16-bit depth PNG, got {pixels.dtype} {pixels.shape}",
                        UNREADABLE)
    return pixels.astype(np.float32)


def read_png_nyu(path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """NYU depth: an RGB PNG whose depth in mm is B + 256 G, as float32 (of `shape` (H, W), if given)."""
    pixels = _open(path, shape)
    if pixels.ndim != 3 or pixels.shape[2] < 3 or pixels.dtype != np.uint8:
        raise DataError(f"{path}: expected an 8-bit RGB PNG (NYU depth = B + 256 G), got {pixels.dtype} "
                        f"{pixels.shape}", UNREADABLE)
    return (pixels[..., 2].astype(np.float32) + 256 * pixels[..., 1].astype(np.float32))
