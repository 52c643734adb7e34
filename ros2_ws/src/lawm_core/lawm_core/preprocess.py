"""Camera frames -> the model's input: raw ``sensor_msgs/Image`` fields to RGB, then square.

``image_from_msg_fields`` takes the message's fields (not the message, so the core needs no
ROS) and returns a fresh (H, W, 3) uint8 RGB array that does not alias the message buffer;
``image_from_compressed`` does the same for a ``sensor_msgs/CompressedImage`` (jpeg or png).
``fit_image`` does what training does (``lawm.data.dataset.square_resize``): centre crop to a
square, then ``cv2.INTER_AREA`` resize.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from lawm_core.errors import InputError

# encoding -> (channels, cv2 conversion to RGB or None)
ENCODINGS: dict[str, tuple[int, int | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
}
SUPPORTED_ENCODINGS = tuple(ENCODINGS)


def _as_bytes(data: Any) -> np.ndarray:
    """Any byte buffer (bytes, bytearray, memoryview, array.array('B'), uint8 ndarray) -> flat
    uint8 view, no copy where possible."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise InputError(f"image data must be uint8 bytes, got an array of {data.dtype}")
        return data.reshape(-1)
    try:
        view = memoryview(data)
    except TypeError as err:
        raise InputError(f"image data is not a byte buffer ({type(data).__name__})") from err
    if view.itemsize != 1:
        raise InputError(f"image data must be bytes, got items of {view.itemsize} bytes")
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    return np.frombuffer(view.cast("B"), dtype=np.uint8)


def image_from_msg_fields(
    data: bytes | memoryview | np.ndarray, encoding: str, height: int, width: int, step: int
) -> np.ndarray:
    """``sensor_msgs/Image`` fields -> (height, width, 3) uint8 RGB, a new array.

    Supports rgb8, bgr8, rgba8, bgra8 (alpha dropped) and mono8 (replicated to 3 channels).
    Rows may be padded (``step`` > width * channels); bytes past ``step * height`` are
    ignored. InputError, saying why, for an unsupported encoding, a zero or negative size, a
    ``step`` shorter than a row, or data shorter than ``step * height``.
    """
    enc = str(encoding).strip().lower()
    if enc not in ENCODINGS:
        raise InputError(
            f"unsupported image encoding {encoding!r} (supported: {', '.join(ENCODINGS)})"
        )
    channels, conversion = ENCODINGS[enc]
    try:
        height, width, step = int(height), int(width), int(step)
    except (TypeError, ValueError) as err:
        raise InputError(f"image height/width/step must be integers ({err})") from err
    if height <= 0 or width <= 0:
        raise InputError(f"image has zero size ({width}x{height})")
    row = width * channels
    if step < row:
        raise InputError(
            f"image step {step} is shorter than a row ({width} px x {channels} B = {row} B, {enc})"
        )
    flat = _as_bytes(data)
    need = step * height
    if flat.size < need:
        raise InputError(
            f"image data truncated: {flat.size} bytes, {enc} {width}x{height} with step "
            f"{step} needs {need}"
        )
    rows = flat[:need].reshape(height, step)[:, :row]
    img = rows.reshape(height, width, channels)
    if conversion is None:
        return np.array(img, dtype=np.uint8, order="C", copy=True)
    if channels == 1:
        img = img[:, :, 0]
    return cv2.cvtColor(np.ascontiguousarray(img), conversion)


# A compressed camera frame larger than this is refused before decoding (a 4K png is ~25 MB).
MAX_COMPRESSED_BYTES = 64 * 1024 * 1024
MAX_DECODED_PIXELS = 4096 * 4096


def image_from_compressed(data: bytes | memoryview | np.ndarray, fmt: str = "") -> np.ndarray:
    """``sensor_msgs/CompressedImage`` fields -> (H, W, 3) uint8 RGB, a new array.

    jpeg and png as image_transport's ``compressed`` plugin writes them (``format`` such as
    ``"jpeg"``, ``"png"`` or ``"rgb8; jpeg compressed bgr8"``: the bytes decode to BGR whatever
    the source encoding, so the result is converted to RGB; grey and 16-bit pngs come out as
    8-bit RGB). InputError, saying why, for a depth image (``compressedDepth``), empty,
    oversized or undecodable bytes.
    """
    text = str(fmt)
    if "compresseddepth" in text.lower().replace(" ", ""):
        raise InputError(f"CompressedImage format {fmt!r} is a depth image, not a camera frame")
    flat = _as_bytes(data)
    if flat.size == 0:
        raise InputError("CompressedImage has no data")
    if flat.size > MAX_COMPRESSED_BYTES:
        raise InputError(
            f"CompressedImage of {flat.size} bytes is larger than {MAX_COMPRESSED_BYTES}"
        )
    try:
        bgr = cv2.imdecode(flat, cv2.IMREAD_COLOR)
    except cv2.error as err:
        bgr, why = None, str(err).strip().splitlines()[-1]
    else:
        why = "not a jpeg or png image, or truncated"
    if bgr is None:
        raise InputError(
            f"cannot decode CompressedImage ({flat.size} bytes, format {fmt!r}): {why}"
        )
    if bgr.shape[0] * bgr.shape[1] > MAX_DECODED_PIXELS:
        raise InputError(f"CompressedImage decodes to {bgr.shape[1]}x{bgr.shape[0]}: too large")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def fit_image(img: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: centre crop to a square, then INTER_AREA
    resize. Returns ``img`` itself (contiguous) when it already has that size."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        what = img.dtype if isinstance(img, np.ndarray) else type(img).__name__
        raise InputError(f"image must be a uint8 numpy array, got {what}")
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise InputError(f"image must be (H, W, 3) with H, W > 0, got {img.shape}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise InputError(f"size must be a positive integer, got {size!r}")
    size = int(size)
    h, w = img.shape[:2]
    if h == size and w == size:
        return np.ascontiguousarray(img)
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = np.ascontiguousarray(img[top : top + side, left : left + side])
    if side == size:
        return crop
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
