"""Offline replay: the exported model run through the runtime core on a bag's steps, no ROS.

``frame_inputs`` streams the bag once and gives each step its inputs (every model camera's
latest image at or before the step, decoded by ``lawm_core.bags`` as training decodes it, and
the proprio in the model's layout); ``infer`` runs them through
``lawm_core.runner.PolicyRunner``, the chain the policy node and simulated evaluation run;
``run_offline`` loads the model and the instruction's embedding and puts the two together. The
steps are at the model's control rate (``index``), as the node would run it on the robot.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lawm_core import bags, contract
from lawm_core.errors import InputError, ModelLoadError
from lawm_core.model import PolicyModel
from lawm_core.runner import PolicyRunner
from lawm_core.text_encoder import TextEncoderRuntime
from lawm_policy.eval_replay.index import BagIndex, ReplayError
from lawm_policy.eval_replay.report import Evaluation, GripperScoring

MAX_WARNINGS = 20


@dataclass
class FrameInput:
    """A step's inputs. ``images``: camera -> (H, W, 3) uint8 RGB as decoded from the bag;
    ``proprio``: float32 (P,) in the model's layout, or None (no robot state fed);
    ``problem``: why the step cannot be evaluated (an image missing, stale or undecodable, no
    proprio yet), else None."""

    frame: int
    images: dict[str, np.ndarray]
    proprio: np.ndarray | None
    problem: str | None = None


def frame_inputs(index: BagIndex, cameras: Sequence[str]) -> Iterator[FrameInput]:
    """Each step's inputs in order, reading the bag once (a step is given as soon as its
    images have been read; an image is kept only until the last step that uses it). An image
    older than ``index.stale_ns`` at its step is a problem, as it would be on the robot."""
    sel = index.selection
    topic_cam = {sel.images[c]: c for c in cameras}
    needs = {c: index.frame_images[c] for c in cameras}
    last_use: dict[str, dict[int, int]] = {c: {} for c in cameras}
    for cam, idx in needs.items():
        for frame, k in enumerate(idx.tolist()):
            if k >= 0:
                last_use[cam][k] = frame
    cache: dict[str, dict[int, np.ndarray | InputError]] = {c: {} for c in cameras}
    seen = dict.fromkeys(cameras, 0)
    n = index.n_frames

    def ready(frame: int) -> bool:
        return all(needs[c][frame] < seen[c] for c in cameras)

    def take(frame: int) -> FrameInput:
        images: dict[str, np.ndarray] = {}
        problems: list[str] = []
        for cam in cameras:
            k = int(needs[cam][frame])
            got = cache[cam].get(k) if k >= 0 else None
            age = (
                int(index.frame_stamps[frame] - index.image_stamps[sel.images[cam]][k])
                if k >= 0
                else 0
            )
            if got is None:
                problems.append(f"no {cam} image yet")
            elif index.stale_ns is not None and age > index.stale_ns:
                problems.append(f"{cam} image {age * 1e-9:.3f} s old (stale)")
            elif isinstance(got, InputError):
                problems.append(f"{cam}: {got}")
            else:
                images[cam] = got
            done = [j for j in cache[cam] if last_use[cam].get(j, -1) <= frame]
            for j in done:  # no later frame needs it
                del cache[cam][j]
        proprio = None
        if index.proprio is not None:
            proprio = index.proprio[frame]
            if not np.all(np.isfinite(proprio)):
                problems.append("no proprio yet")
        return FrameInput(frame, images, proprio, "; ".join(problems) or None)

    next_frame = 0
    for topic, _logtime, raw in index.messages(topic_cam):
        cam = topic_cam[topic]
        k = seen[cam]
        seen[cam] += 1
        if k in last_use[cam]:
            try:
                cache[cam][k] = bags.decode_image(raw, index.topics[topic])
            except InputError as err:
                cache[cam][k] = err
        while next_frame < n and ready(next_frame):
            yield take(next_frame)
            next_frame += 1
    while next_frame < n:  # a bag that changed since the scan
        yield take(next_frame)
        next_frame += 1


def infer(
    runner: PolicyRunner,
    lang: np.ndarray,
    inputs: Iterable[FrameInput],
    times_s: np.ndarray,
) -> Evaluation:
    """The policy node's per-tick decision once per frame, by the same ``PolicyRunner``: fit
    every camera's image, predict a chunk from the images, the proprio (the training mean for
    frames without) and the instruction embedding ``lang`` (D,), aggregate it with the previous
    frames' chunks and denormalise. ``times_s`` float64 (N,): each frame's time, so a pause in
    the bag restarts the aggregation as it would on the robot. A frame that cannot be evaluated
    is skipped and the aggregation restarts. Latency: the runner's time per frame."""
    n_frames = len(times_s)
    predicted = np.full((n_frames, contract.ACTION_DIM), np.nan)
    latency = np.full(n_frames, np.nan)
    answered = np.zeros(n_frames, bool)
    warnings: list[str] = []
    for item in inputs:
        if item.problem is None:
            result = runner.step(item.images, item.proprio, lang, float(times_s[item.frame]))
            if result.acted:
                predicted[item.frame] = result.raw
                latency[item.frame] = result.seconds * 1e3
                answered[item.frame] = True
                continue
            problem = result.reason
        else:
            problem = item.problem
            runner.reset()
        if len(warnings) < MAX_WARNINGS:
            warnings.append(f"frame {item.frame} skipped: {problem}")
    return Evaluation(
        mode="offline",
        predicted=predicted,
        latency_ms=latency,
        answered=answered,
        published=n_frames,
        latency_what="inference time per frame (preprocess + predict + aggregate + denormalize)",
        warnings=warnings,
    )


def max_gap_s(model: PolicyModel, times_s: np.ndarray) -> float:
    """When a bag's frames are this far apart the aggregation restarts: two control periods,
    or 2.5 frame periods for bags recorded slower than the control rate (a dropped frame is
    not a pause)."""
    gap = 2.0 / model.control_rate_hz
    if len(times_s) > 1:
        gap = max(gap, 2.5 * float(np.median(np.diff(times_s))))
    return gap


def load_model(
    index: BagIndex,
    model_dir: str | Path,
    providers: str = "auto",
    threads: int = 0,
    backend: str = "auto",
) -> PolicyModel:
    """The exported model, checked against the bag's selection; ReplayError if unusable."""
    try:
        model = PolicyModel(model_dir, providers=providers, threads=threads, backend=backend)
    except ModelLoadError as err:
        raise ReplayError(f"cannot load the model: {err}") from err
    if model.action_dim != contract.ACTION_DIM:
        raise ReplayError(
            f"{model_dir}: the model's action_dim is {model.action_dim}, not {contract.ACTION_DIM}"
        )
    sel = index.selection
    if set(sel.images) != set(model.cameras):
        raise ReplayError(
            f"the model's cameras are {list(model.cameras)} but the image topics are given "
            f"for {list(sel.images)}; pass --image-topic CAMERA=TOPIC for each model camera"
        )
    layout = tuple(model.spec.proprio_layout) if model.spec.proprio_dim > 0 else ()
    if index.proprio is not None and index.proprio_layout != layout:
        raise ReplayError(
            f"{model_dir}: the model's proprio_layout is {list(layout)}, the bag's robot state "
            f"was read as {list(index.proprio_layout or ())}"
        )
    return model


def embed_instruction(model_dir: str | Path, instruction: str | None) -> np.ndarray:
    """float32 (D,): the instruction's embedding by the exported text encoder."""
    if not instruction:
        raise ReplayError(
            "no instruction: pass --instruction TEXT (the bag has no instruction topic)"
        )
    if not (Path(model_dir) / contract.TEXT_ENCODER_SIDECAR_FILE).is_file():
        raise ReplayError(
            f"{model_dir}: no text encoder (text_encoder.json) to embed the instruction; "
            "export the model with its text encoder"
        )
    try:
        return TextEncoderRuntime(Path(model_dir)).embed(instruction).astype(np.float32)
    except ModelLoadError as err:
        raise ReplayError(f"cannot load the text encoder: {err}") from err
    except ValueError as err:
        raise ReplayError(f"instruction {instruction!r} refused: {err}") from err


def run_offline(
    index: BagIndex,
    model_dir: str | Path,
    instruction: str | None,
    providers: str = "auto",
    threads: int = 0,
    backend: str = "auto",
) -> Evaluation:
    """Every step of the bag (``index``, opened at the model's control rate) through the
    exported model; ReplayError if no step could be evaluated."""
    model = load_model(index, model_dir, providers, threads, backend)
    lang = embed_instruction(model_dir, instruction)
    model.warmup()
    times = index.frame_times_s
    runner = PolicyRunner(model, max_gap_s=max_gap_s(model, times))
    ev = infer(runner, lang, frame_inputs(index, model.cameras), times)
    if not ev.answered.any():
        raise ReplayError(
            f"{index.path}: no frame could be evaluated ({ev.warnings[0] if ev.warnings else '?'})"
        )
    spec = model.spec
    ev.gripper = GripperScoring.of_model(spec, f"model sidecar {Path(model_dir).resolve()}")
    ev.extra["rates"] = {
        **index.rates(),
        "model_control_rate_hz": model.control_rate_hz,
    }
    ev.extra["model"] = {
        "dir": str(Path(model_dir).resolve()),
        "onnx_sha256": spec.onnx_sha256,
        "provider": model.provider,
        "backend": model.backend,
        "precision": model.precision,
        "backend_selection": model.selection.summary(),
        "image_size": model.image_size,
        "chunk_size": model.chunk_size,
        "cameras": list(model.cameras),
        "control_rate_hz": model.control_rate_hz,
        "proprio_layout": list(spec.proprio_layout) if spec.proprio_dim > 0 else [],
    }
    return ev
