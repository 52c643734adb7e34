"""Image preprocessing (lawm_core.preprocess): decoding sensor_msgs/Image fields in every
supported encoding, and fitting images to the model's input exactly as training does."""

from __future__ import annotations

import array

import cv2
import numpy as np
import pytest

from lawm.data.dataset import square_resize
from lawm_core.errors import InputError
from lawm_core.preprocess import SUPPORTED_ENCODINGS, fit_image, image_from_msg_fields


def _known_image(h: int = 5, w: int = 7) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(rgb: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, C) pixels as the encoding lays them out, and the RGB image we expect back."""
    alpha = np.full(rgb.shape[:2] + (1,), 200, np.uint8)
    if encoding == "rgb8":
        return rgb, rgb
    if encoding == "bgr8":
        return rgb[..., ::-1], rgb
    if encoding == "rgba8":
        return np.concatenate([rgb, alpha], axis=2), rgb
    if encoding == "bgra8":
        return np.concatenate([rgb[..., ::-1], alpha], axis=2), rgb
    assert encoding == "mono8"
    gray = rgb[..., 0]
    return gray[..., None], np.repeat(gray[..., None], 3, axis=2)


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
@pytest.mark.parametrize("pad", [0, 3])
def test_image_from_msg_fields(encoding, pad):
    rgb = _known_image()
    h, w = rgb.shape[:2]
    pixels, want = _encode(rgb, encoding)
    c = pixels.shape[2]
    rows = np.zeros((h, w * c + pad), np.uint8)
    rows[:, : w * c] = pixels.reshape(h, w * c)
    rows[:, w * c :] = 99  # row padding must be ignored
    raw = rows.tobytes() + b"\x07" * 4  # and trailing bytes past step * height
    for data in (
        raw,
        bytearray(raw),
        memoryview(raw),
        array.array("B", raw),
        np.frombuffer(raw, np.uint8),
    ):
        got = image_from_msg_fields(data, encoding, h, w, w * c + pad)
        assert got.shape == (h, w, 3) and got.dtype == np.uint8 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)
    # The result owns its pixels: reusing the message buffer does not change it.
    buf = bytearray(raw)
    got = image_from_msg_fields(buf, encoding, h, w, w * c + pad)
    buf[:] = bytes(len(buf))
    np.testing.assert_array_equal(got, want)


def test_image_encoding_case_and_opencv_agree():
    rgb = _known_image(8, 6)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    got = image_from_msg_fields(bgr.tobytes(), "BGR8", 8, 6, 18)
    np.testing.assert_array_equal(got, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


@pytest.mark.parametrize(
    "args, match",
    [
        ((b"\0" * 60, "16UC1", 5, 6, 12), "unsupported image encoding '16UC1'.*rgb8"),
        ((b"\0" * 60, "yuv422", 5, 6, 12), "unsupported image encoding"),
        ((b"", "rgb8", 0, 6, 18), r"zero size \(6x0\)"),
        ((b"\0" * 60, "rgb8", 5, 0, 0), "zero size"),
        ((b"\0" * 89, "rgb8", 5, 6, 18), r"truncated: 89 bytes.*needs 90"),
        ((b"", "mono8", 5, 6, 6), "truncated: 0 bytes"),
        ((b"\0" * 90, "rgb8", 5, 6, 17), r"step 17 is shorter than a row"),
        ((b"\0" * 200, "bgra8", 5, 6, 18), r"step 18 is shorter than a row \(6 px x 4 B"),
        ((np.zeros(90, np.float32), "rgb8", 5, 6, 18), "uint8 bytes"),
        ((12345, "rgb8", 5, 6, 18), "not a byte buffer"),
    ],
)
def test_image_from_msg_fields_rejects(args, match):
    with pytest.raises(InputError, match=match):
        image_from_msg_fields(*args)


@pytest.mark.parametrize("shape", [(48, 64), (64, 48), (50, 50), (20, 30), (33, 32), (32, 32)])
def test_fit_image_matches_training(shape):
    img = np.random.default_rng(2).integers(0, 256, (*shape, 3), dtype=np.uint8)
    got = fit_image(img, 32)
    assert got.shape == (32, 32, 3) and got.dtype == np.uint8
    want = square_resize(img[None], 32)[0].transpose(1, 2, 0)  # what training feeds the model
    np.testing.assert_array_equal(got, want)


def test_fit_image_noop_and_errors():
    img = _known_image(16, 16)
    assert fit_image(img, 16) is img
    np.testing.assert_array_equal(
        fit_image(_known_image(16, 20), 16), _known_image(16, 20)[:, 2:18]
    )
    for bad, match in [
        (img.astype(np.float32), "uint8"),
        (img[..., :2], r"\(H, W, 3\)"),
        (np.zeros((0, 4, 3), np.uint8), "H, W > 0"),
    ]:
        with pytest.raises(InputError, match=match):
            fit_image(bad, 8)
    with pytest.raises(InputError, match="positive integer"):
        fit_image(img, 0)
