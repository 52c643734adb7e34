"""Hostile ROS messages for the robustness benchmark, generated systematically from a seed.

Each generator cycles through its categories in order (so every category is sent within the
first few dozen messages, whatever the total) and draws the details of each message from a
seeded ``numpy`` generator, so a failure is reproducible from (seed, index). Categories cover
what a broken driver, a wrong launch file or an attacker can put on a topic: every image
encoding with wrong sizes, steps and truncated or oversized data; garbage, truncated and
oversized jpeg/png bytes; non-finite, huge and wrongly sized robot state; JointState with
mismatched arrays or missing joints; instructions from empty to 1 MB; stamps zero, far in the
future or past, and jumping backwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, TwistStamped
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float32MultiArray, Float64, String

ENCODINGS = (
    "rgb8", "bgr8", "mono8", "rgba8", "bgra8", "mono16", "16UC1", "32FC1", "8UC3", "8UC4",
    "yuv422_yuy2", "bayer_rggb8", "", "RGB8", "rgb8\x00junk",
)  # fmt: skip
_BYTES_PER_PIXEL = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4, "mono16": 2,
                    "16UC1": 2, "32FC1": 4, "8UC3": 3, "8UC4": 4, "yuv422_yuy2": 2,
                    "bayer_rggb8": 1}  # fmt: skip
NON_FINITE = (float("nan"), float("inf"), float("-inf"), 3.4e38, -3.4e38)


class Stamps:
    """Header stamps around ``now()`` (seconds): valid ones, and zero, an hour ahead, a day
    behind, far out of range, and a run that jumps backwards."""

    KINDS = ("now", "zero", "future", "past", "backwards", "now", "huge", "now")

    def __init__(self, now: Callable[[], float], rng: np.random.Generator) -> None:
        self.now, self.rng = now, rng
        self.i = 0

    def __call__(self) -> Time:
        kind = self.KINDS[self.i % len(self.KINDS)]
        self.i += 1
        t = self.now()
        if kind == "zero":
            return Time(sec=0, nanosec=0)
        if kind == "future":
            t += 3600.0
        elif kind == "past":
            t -= 86400.0
        elif kind == "backwards":
            t -= float(self.rng.uniform(0.05, 5.0))
        elif kind == "huge":
            return Time(sec=2**31 - 1, nanosec=999_999_999)
        t = max(t, 0.0)
        return Time(sec=int(t), nanosec=int((t % 1.0) * 1e9))


def _image_bytes(rng: np.random.Generator, n: int) -> bytes:
    return rng.integers(0, 256, max(n, 0), dtype=np.uint8).tobytes()


def raw_images(rng: np.random.Generator, stamps: Stamps, size: int = 48) -> Iterator[Image]:
    """sensor_msgs/Image: each encoding with a consistent message, then each way to break
    the sizes (zero, one pixel, huge claimed dimensions, step too small / not a multiple /
    huge, data truncated, empty or longer than claimed)."""
    breaks = ("valid", "zero", "one_pixel", "huge_dims", "step_small", "step_odd", "step_huge",
              "truncated", "empty", "extra", "wide")  # fmt: skip
    i = 0
    while True:
        enc = ENCODINGS[i % len(ENCODINGS)]
        how = breaks[(i // len(ENCODINGS)) % len(breaks)] if i >= len(ENCODINGS) else "valid"
        i += 1
        bpp = _BYTES_PER_PIXEL.get(enc, 3)
        h = w = size
        step = w * bpp
        data_len = h * step
        if how == "zero":
            h = w = step = data_len = 0
        elif how == "one_pixel":
            h = w = 1
            step, data_len = bpp, bpp
        elif how == "huge_dims":
            h, w = 2**31 - 1, 2**31 - 1  # claims far more than it carries
        elif how == "step_small":
            step = max(w * bpp - 1, 0)
        elif how == "step_odd":
            step = w * bpp + 1
            data_len = h * step
        elif how == "step_huge":
            step = 2**31 - 1
        elif how == "truncated":
            data_len = data_len // 2
        elif how == "empty":
            data_len = 0
        elif how == "extra":
            data_len += 1000
        elif how == "wide":
            h, w = 4, 4000
            step = w * bpp
            data_len = h * step
        msg = Image(height=h, width=w, encoding=enc, step=step, is_bigendian=int(rng.integers(2)))
        msg.header.stamp = stamps()
        msg.header.frame_id = "fuzz"
        msg.data = _image_bytes(rng, data_len)
        yield msg


def _encoded(rng: np.random.Generator, ext: str, size: int = 48) -> bytes:
    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    ok, data = cv2.imencode(ext, img)
    assert ok
    return data.tobytes()


def compressed_images(rng: np.random.Generator, stamps: Stamps) -> Iterator[CompressedImage]:
    """sensor_msgs/CompressedImage: valid jpeg and png, then garbage, truncated, empty,
    headers with garbage after them, a decodable image of 4000x4000 pixels, 1 MB of noise,
    and formats no decoder knows."""
    kinds = ("jpeg", "png", "garbage", "truncated_jpeg", "truncated_png", "empty",
             "jpeg_header", "png_header", "huge_decoded", "noise_1mb", "bad_format")  # fmt: skip
    big = None
    i = 0
    while True:
        kind = kinds[i % len(kinds)]
        i += 1
        fmt = "jpeg"
        if kind == "jpeg":
            data = _encoded(rng, ".jpg")
        elif kind == "png":
            data, fmt = _encoded(rng, ".png"), "png"
        elif kind == "garbage":
            data = _image_bytes(rng, int(rng.integers(1, 5000)))
        elif kind == "truncated_jpeg":
            full = _encoded(rng, ".jpg")
            data = full[: int(rng.integers(1, len(full)))]
        elif kind == "truncated_png":
            full = _encoded(rng, ".png")
            data, fmt = full[: int(rng.integers(1, len(full)))], "png"
        elif kind == "empty":
            data = b""
        elif kind == "jpeg_header":
            data = b"\xff\xd8\xff\xe0" + _image_bytes(rng, 2000)
        elif kind == "png_header":
            data, fmt = b"\x89PNG\r\n\x1a\n" + _image_bytes(rng, 2000), "png"
        elif kind == "huge_decoded":  # a small file that decodes to 48 MB
            if big is None:
                ok, enc = cv2.imencode(".png", np.zeros((4000, 4000, 3), np.uint8))
                big = enc.tobytes()
            data, fmt = big, "png"
        elif kind == "noise_1mb":
            data = _image_bytes(rng, 1 << 20)
        else:
            data, fmt = _encoded(rng, ".jpg"), str(rng.choice(["tiff", "", "rgb8; h264", "raw"]))
        msg = CompressedImage(format=fmt, data=data)
        msg.header.stamp = stamps()
        yield msg


def flat_proprio(rng: np.random.Generator, dim: int) -> Iterator[Float32MultiArray]:
    """std_msgs/Float32MultiArray robot state: valid, each non-finite or huge value in a random
    slot, and every wrong length from empty to 1000 values."""
    lengths = (0, 1, dim - 1, dim + 1, 1000)
    i = 0
    while True:
        i += 1
        kind = i % 3
        values = rng.normal(size=dim).astype(np.float32)
        if kind == 1:
            values[int(rng.integers(dim))] = NON_FINITE[(i // 3) % len(NON_FINITE)]
        elif kind == 2:
            values = rng.normal(size=max(lengths[(i // 3) % len(lengths)], 0)).astype(np.float32)
        yield Float32MultiArray(data=values.tolist())


def joint_states(
    rng: np.random.Generator, stamps: Stamps, names: list[str]
) -> Iterator[JointState]:
    """sensor_msgs/JointState: valid, positions shorter or longer than the names, the gripper
    joints missing, duplicated names, non-finite positions, everything empty."""
    kinds = ("valid", "short", "long", "missing", "duplicate", "non_finite", "empty", "velocity")
    i = 0
    while True:
        kind = kinds[i % len(kinds)]
        i += 1
        msg_names = list(names)
        pos = rng.uniform(0.0, 0.04, len(names)).tolist()
        vel: list[float] = []
        if kind == "short":
            pos = pos[:-1]
        elif kind == "long":
            pos = pos + [0.1, 0.2]
        elif kind == "missing":
            msg_names, pos = msg_names[:1], pos[:1]
        elif kind == "duplicate":
            msg_names, pos = [names[-1]] * len(names), pos
        elif kind == "non_finite":
            pos[int(rng.integers(len(pos)))] = NON_FINITE[(i // len(kinds)) % len(NON_FINITE)]
        elif kind == "empty":
            msg_names, pos = [], []
        elif kind == "velocity":
            vel = [float("nan")] * (len(names) + 3)
        msg = JointState(name=msg_names, position=pos, velocity=vel)
        msg.header.stamp = stamps()
        yield msg


def poses(rng: np.random.Generator, stamps: Stamps, frame: str) -> Iterator[PoseStamped]:
    """geometry_msgs/PoseStamped: valid, non-finite or huge positions, zero and non-unit
    quaternions, the wrong frame."""
    kinds = ("valid", "nan_position", "inf_position", "huge", "zero_quat", "long_quat",
             "nan_quat", "wrong_frame")  # fmt: skip
    i = 0
    while True:
        kind = kinds[i % len(kinds)]
        i += 1
        msg = PoseStamped()
        msg.header.stamp = stamps()
        msg.header.frame_id = "somewhere_else" if kind == "wrong_frame" else frame
        p = rng.uniform(-0.5, 0.5, 3)
        q = np.array([1.0, 0.0, 0.0, 0.0])
        if kind == "nan_position":
            p[int(rng.integers(3))] = float("nan")
        elif kind == "inf_position":
            p[int(rng.integers(3))] = float("inf")
        elif kind == "huge":
            p = np.full(3, 1e300)
        elif kind == "zero_quat":
            q = np.zeros(4)
        elif kind == "long_quat":
            q = np.array([3.0, 1.0, 0.0, 0.0])
        elif kind == "nan_quat":
            q = np.array([float("nan"), 0.0, 0.0, 1.0])
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in p)
        o = msg.pose.orientation
        o.w, o.x, o.y, o.z = (float(v) for v in q)
        yield msg


def instructions(rng: np.random.Generator) -> Iterator[String]:
    """std_msgs/String instructions: empty, blanks, control characters, mixed scripts, lone
    surrogates are impossible in the type (it carries UTF-8), so: 1 kB, 100 kB and 1 MB of
    text, and a valid instruction in between."""
    valid = "push the block to the top left corner and lift it"
    kinds = ("empty", "blank", "control", "unicode", "long_1k", "long_100k", "long_1m", "valid")
    i = 0
    while True:
        kind = kinds[i % len(kinds)]
        i += 1
        if kind == "empty":
            text = ""
        elif kind == "blank":
            text = " \t\n " * int(rng.integers(1, 50))
        elif kind == "control":
            text = "".join(chr(int(c)) for c in rng.integers(1, 32, 64))
        elif kind == "unicode":
            text = "поставь 碗 on the plate 🤖 \u202e\u200b" * 3
        elif kind == "long_1k":
            text = (valid + " ") * 20
        elif kind == "long_100k":
            text = "x" * 100_000
        elif kind == "long_1m":
            text = "lift " * 200_000
        else:
            text = valid
        yield String(data=text)


def twists(rng: np.random.Generator, stamps: Stamps, frame: str) -> Iterator[TwistStamped]:
    """geometry_msgs/TwistStamped velocity commands: valid, each non-finite or huge value in
    a random slot, another frame, everything at once."""
    kinds = ("valid", "nan", "inf", "huge", "wrong_frame", "all_huge", "tiny", "valid")
    i = 0
    while True:
        kind = kinds[i % len(kinds)]
        i += 1
        v = rng.uniform(-0.2, 0.2, 6)
        if kind in ("nan", "inf", "huge"):
            v[int(rng.integers(6))] = {"nan": float("nan"), "inf": float("inf"), "huge": 1e300}[
                kind
            ]
        elif kind == "all_huge":
            v[:] = -3.4e38
        elif kind == "tiny":
            v[:] = 5e-324
        msg = TwistStamped()
        msg.header.stamp = stamps()
        msg.header.frame_id = "elsewhere" if kind == "wrong_frame" else frame
        t = msg.twist
        t.linear.x, t.linear.y, t.linear.z = (float(x) for x in v[:3])
        t.angular.x, t.angular.y, t.angular.z = (float(x) for x in v[3:])
        yield msg


def gripper_commands(rng: np.random.Generator) -> Iterator[Float64]:
    """std_msgs/Float64 gripper commands: +-1, in between, non-finite, huge."""
    values = (1.0, -1.0, 0.3, *NON_FINITE, 1e300, -0.0)
    i = 0
    while True:
        i += 1
        yield Float64(data=float(values[i % len(values)]))
