"""Export a trained policy, and the instruction encoder, to ONNX with their sidecars (the
contracts the robot runtime checks). Every export is checked against torch on onnxruntime before
it lands in the folder; ``ExportError`` when they disagree.

``policy.onnx`` inputs (names from lawm_core.contract):
    image_<camera>: uint8 (B, H, W, 3) RGB upright, one per camera in ``cameras`` order
    proprio: float32 (B, P) raw units in ``proprio_layout`` order (normalised inside the
        graph); only when the training data had robot state
    lang: float32 (B, 384) sentence embedding (text_encoder.onnx gives it)
output:
    actions: float32 (B, K, 7), normalised action space, clamped to [-1, 1] inside the graph

Export = training: the inputs are the ones the training data provided (the run record's
``info["inputs"]``: the cameras present in at least one episode, and whether any episode had
robot state), and the graph computes the training forward (``Policy.forward`` with its masks)
for an observation in which every one of them is present. A camera absent from every episode,
and the proprio of data without robot state, are masked in every training step, so they are
not inputs of the graph at all. Every export is checked against that training forward.

``policy.json`` (``lawm_core.sidecar.PolicySidecar``) records names, shapes, cameras, image
size, statistics, chunk size, the control rate the data were sampled at, the proprio layout,
the action space (what the raw actions physically are, gripper convention included: from the
training run's data, or given), opset, the sha256 of policy.onnx and the run it came from.
Run-record keys an older training run lacks take the defaults of that time: every camera of
the model, proprio ``contract.PROPRIO_LAYOUT``, the preset's control rate, the sign gripper.

``text_encoder.onnx`` (:func:`export_text_encoder`, from ``lawm.language.MiniLM``):
    input_ids, attention_mask: int64 (B, L) -> embedding: float32 (B, 384), L2-normalised
with ``tokenizer.json`` and ``text_encoder.json`` (``lawm_core.sidecar.TextEncoderSidecar``).
"""

from __future__ import annotations

import datetime as _dt
import math
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from lawm.checkpoint import load_policy
from lawm.config import LawmConfig
from lawm.language import MAX_LENGTH, MODEL_NAME, MiniLM, MiniLMTokenizer, find_minilm_dir
from lawm.models.policy import Policy
from lawm.quantize import (
    CALIBRATION_COUNT,
    DEFAULT_TOLERANCE,
    REFERENCE_COUNT,
    CalibrationError,
    draw_frames,
    write_companions,
)
from lawm_core import contract
from lawm_core.contract import TEXT_INPUT_NAMES, TEXT_OUTPUT_NAME
from lawm_core.files import atomic_dir, atomic_path, sha256_file
from lawm_core.sidecar import (
    BATCH,
    SEQUENCE,
    ActionSpace,
    Normalization,
    PolicySidecar,
    TextEncoderSidecar,
)

PARITY_TOLERANCE = 1e-4
# Text-encoder parity inputs: short and long, cased, and one longer than MAX_LENGTH tokens.
_PARITY_SENTENCES = (
    "put the bowl on the plate",
    "Open the top drawer of the cabinet, then put the black bowl inside it.",
    "pick up the alphabet soup and place it in the basket",
    "turn on the stove",
    " ".join(["stack the red block on the blue block"] * 30),  # truncated to MAX_LENGTH
)


class ExportError(RuntimeError):
    """An export that cannot be made: a graph that disagrees with torch beyond
    PARITY_TOLERANCE (it is not written), or a policy whose action space is unknown."""


def _record(policy_dir: Path, key: str) -> str:
    return f"{policy_dir}/config.json info.{key}"


def resolve_action_space(policy_dir: Path, info: dict, given: str | None) -> ActionSpace:
    """The action space to declare: ``given`` (one of ``contract.ACTION_KINDS``), else the one
    the training run recorded from its data (``info["action_space"]``), with the gripper
    convention the run recorded (``info["gripper"]``: convention, open, closed; the sign
    convention when absent). ExportError when neither says, for an unknown kind or an invalid
    gripper."""
    kind = given or info.get("action_space")
    if kind is None:
        raise ExportError(
            f"{policy_dir}: the training data did not say what its actions are (units, frame), "
            f"so the robot could not turn them into motion; pass --action-space "
            f"{'|'.join(contract.ACTION_KINDS)} (osc_pose_delta: LIBERO/robosuite OSC_POSE "
            "deltas; twist: recorded velocity commands)"
        )
    try:
        ActionSpace.for_kind(kind)
    except ValueError as err:
        where = "--action-space" if given else _record(policy_dir, "action_space")
        raise ExportError(f"{where}: {err}") from err
    gripper = info.get("gripper")
    if gripper is None:
        return ActionSpace.for_kind(kind)
    if not isinstance(gripper, dict) or set(gripper) != {"convention", "open", "closed"}:
        raise ExportError(
            f"{_record(policy_dir, 'gripper')}: must be an object with convention "
            f"({'|'.join(contract.GRIPPER_CONVENTIONS)}), open and closed, got {gripper!r}; "
            "train again with --gripper-convention (and --gripper-open, --gripper-closed)"
        )
    try:
        return ActionSpace.for_kind(
            kind,
            gripper=gripper["convention"],
            gripper_open=gripper["open"],
            gripper_closed=gripper["closed"],
        )
    except ValueError as err:
        raise ExportError(
            f"{_record(policy_dir, 'gripper')}: {err}; train again with --gripper-convention "
            "(and --gripper-open, --gripper-closed)"
        ) from err


def resolve_control_rate(
    policy_dir: Path, info: dict, cfg: LawmConfig, given: float | None
) -> float:
    """The control rate to declare: the rate the training episodes were sampled at
    (``info["control_rate_hz"]``), else ``given``, else the preset's. ExportError for a
    recorded rate that is not a finite number > 0, and for a ``given`` rate that differs from
    the recorded one (chunks learnt at one step period would run at another)."""
    recorded = info.get("control_rate_hz")
    if recorded is not None:
        ok = isinstance(recorded, (int, float)) and not isinstance(recorded, bool)
        if not (ok and math.isfinite(recorded) and recorded > 0):
            raise ExportError(
                f"{_record(policy_dir, 'control_rate_hz')}: must be a finite number of Hz > 0, "
                f"got {recorded!r}; train again (--control-rate-hz)"
            )
        if given is not None and float(given) != float(recorded):
            raise ExportError(
                f"control_rate_hz {given!r}: the training data were sampled at {recorded} Hz "
                f"({_record(policy_dir, 'control_rate_hz')}), so the model's chunks are "
                f"{recorded} Hz steps; export without a rate, or train again at {given} Hz "
                "(--control-rate-hz)"
            )
        return float(recorded)
    rate = cfg.policy.control_rate_hz if given is None else given
    if isinstance(rate, bool) or not (math.isfinite(float(rate)) and float(rate) > 0):
        raise ExportError(f"control_rate_hz must be a finite number of Hz > 0, got {rate!r}")
    return float(rate)


@dataclass(frozen=True)
class ExportInputs:
    """What the exported graph takes: ``cameras`` (model order, those the training data had),
    and robot state when ``proprio``, named by ``proprio_layout`` (``resolve_inputs`` fills
    it; empty without proprio)."""

    cameras: tuple[str, ...]
    proprio: bool
    proprio_layout: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        """The graph's input names, in order."""
        return contract.onnx_input_names(self.cameras, proprio=self.proprio)

    @classmethod
    def every(cls, policy: Policy) -> ExportInputs:
        """Every input the policy reads: all its cameras, and proprio unless it is configured
        without (``use_proprio`` False)."""
        pc = policy.cfg
        return cls(tuple(pc.cameras), pc.use_proprio)


def resolve_inputs(policy_dir: Path, cfg: LawmConfig, info: dict) -> ExportInputs:
    """The graph's inputs, from the training run's record: ``info["inputs"]`` (``cameras``:
    those present in at least one training episode; ``proprio``: whether one had robot state)
    and ``info["proprio_layout"]``. Without ``inputs`` (an older run): every camera of the
    model and proprio ``contract.PROPRIO_LAYOUT``. A policy configured without proprio
    (``use_proprio`` False) takes none. ExportError naming the key for a malformed record."""
    pc = cfg.policy
    inputs = info.get("inputs")
    if inputs is None:
        cameras: tuple[str, ...] = tuple(pc.cameras)
        proprio = True
    else:
        where = _record(policy_dir, "inputs")
        if (
            not isinstance(inputs, dict)
            or set(inputs) != {"cameras", "proprio"}
            or not isinstance(inputs["cameras"], list)
            or not isinstance(inputs["proprio"], bool)
        ):
            raise ExportError(
                f"{where}: must be {{'cameras': [names], 'proprio': true|false}}, got "
                f"{inputs!r}; train again to record the data's inputs"
            )
        unknown = [c for c in inputs["cameras"] if c not in pc.cameras]
        if unknown or not inputs["cameras"]:
            raise ExportError(
                f"{where}: cameras {inputs['cameras']!r} must be a non-empty subset of the "
                f"model's cameras {list(pc.cameras)}; train again to record the data's inputs"
            )
        cameras = tuple(c for c in pc.cameras if c in inputs["cameras"])
        proprio = inputs["proprio"]
    layout: tuple[str, ...] = ()
    if proprio and pc.use_proprio:
        recorded = info.get("proprio_layout")
        layout = contract.PROPRIO_LAYOUT if recorded is None else recorded
        where = _record(policy_dir, "proprio_layout")
        if not isinstance(layout, (list, tuple)) or len(layout) != pc.proprio_dim:
            raise ExportError(
                f"{where}: must list the model's {pc.proprio_dim} proprio names, got "
                f"{layout!r}; train again to record the data's proprio layout"
            )
        problems = [p for p in map(contract.proprio_name_problem, layout) if p]
        if problems or len(set(layout)) != len(layout):
            why = problems[0] if problems else "names repeat"
            raise ExportError(f"{where}: {why}; train again with a supported proprio layout")
        layout = tuple(layout)
    return ExportInputs(cameras, bool(layout), layout)


class OnnxPolicy(nn.Module):
    """The graph we export: HWC uint8 images of ``inputs.cameras``, the proprio (only with
    ``inputs.proprio``) and the language in; clamped normalised action chunk out. It runs
    ``Policy.forward_present``: the training forward with every exported input present and
    every other input masked."""

    def __init__(self, policy: Policy, inputs: ExportInputs | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.inputs = inputs or ExportInputs.every(policy)
        self.cameras = self.inputs.cameras

    def forward(self, *args: Tensor) -> Tensor:
        n = len(self.cameras)
        images = {c: args[i].permute(0, 3, 1, 2) for i, c in enumerate(self.cameras)}
        proprio = args[n] if self.inputs.proprio else None
        lang = args[-1]
        return self.policy.forward_present(images, proprio, lang).clamp(-1.0, 1.0)


def example_inputs(
    policy: Policy, batch: int = 1, seed: int = 0, inputs: ExportInputs | None = None
) -> dict[str, np.ndarray]:
    """Seeded random graph inputs by name (every input of ``inputs``, default all)."""
    cfg = policy.cfg
    inputs = inputs or ExportInputs.every(policy)
    rng = np.random.default_rng(seed)
    s = cfg.image_size
    out = {
        contract.onnx_image_input(c): rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8)
        for c in inputs.cameras
    }
    if inputs.proprio:
        out[contract.ONNX_PROPRIO_INPUT] = rng.normal(size=(batch, cfg.proprio_dim)).astype(
            np.float32
        )
    lang = rng.normal(size=(batch, cfg.lang_dim)).astype(np.float32)
    out[contract.ONNX_LANG_INPUT] = lang / np.linalg.norm(lang, axis=1, keepdims=True)
    return out


def input_names(policy: Policy, inputs: ExportInputs | None = None) -> list[str]:
    return (inputs or ExportInputs.every(policy)).names


def training_forward(policy: Policy, feed: dict[str, np.ndarray]) -> np.ndarray:
    """What training computes for graph inputs ``feed`` (by input name): ``Policy.forward``
    with the training data's layout (a camera that is not an input is a zero image with
    camera_mask False, as the dataset gives it; no proprio input is zeros with has_proprio
    False), clamped to [-1, 1] as the graph is. numpy (B, K, A)."""
    pc = policy.cfg
    lang = torch.from_numpy(feed[contract.ONNX_LANG_INPUT])
    b, s = lang.shape[0], pc.image_size
    images, present = {}, []
    for cam in pc.cameras:
        name = contract.onnx_image_input(cam)
        present.append(name in feed)
        if name in feed:
            images[cam] = torch.from_numpy(feed[name]).permute(0, 3, 1, 2)
        else:
            images[cam] = torch.zeros(b, 3, s, s, dtype=torch.uint8)
    has_proprio = contract.ONNX_PROPRIO_INPUT in feed
    if has_proprio:
        proprio = torch.from_numpy(feed[contract.ONNX_PROPRIO_INPUT])
    else:
        proprio = torch.zeros(b, pc.proprio_dim)
    with torch.no_grad():
        out = policy(
            images,
            proprio,
            lang,
            camera_mask=torch.tensor([present] * b),
            has_proprio=torch.full((b,), has_proprio),
        )
    return out.clamp(-1.0, 1.0).numpy()


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def check_parity(
    policy: Policy,
    onnx_path: Path,
    seed: int = 0,
    batch: int = 2,
    inputs: ExportInputs | None = None,
) -> float:
    """Max abs difference between the training forward (``training_forward``: the masks of
    the inputs the graph lacks included) and onnxruntime on seeded inputs. ``inputs``: what
    the graph takes (default: read from the graph's input names)."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    if inputs is None:
        names = {i.name for i in sess.get_inputs()}
        cameras = tuple(c for c in policy.cfg.cameras if contract.onnx_image_input(c) in names)
        inputs = ExportInputs(cameras, contract.ONNX_PROPRIO_INPUT in names)
    feed = example_inputs(policy, batch=batch, seed=seed, inputs=inputs)
    ref = training_forward(policy, feed)
    got = sess.run([contract.ONNX_ACTION_OUTPUT], feed)[0]
    if got.shape != ref.shape:
        return math.inf
    return float(np.abs(ref - got).max())


def export_policy(
    policy_dir: Path,
    out_dir: Path,
    *,
    opset: int = 17,
    text_encoder: bool = True,
    control_rate_hz: float | None = None,
    action_space: str | None = None,
    data: Sequence[Any] | None = None,
    lang_cache: Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    say=print,
) -> PolicySidecar:
    """Export ``policy_dir`` (model.safetensors + config.json) into ``out_dir``.

    ``data``: episode sources of the training data (``open_data``). With them the export also
    holds the low-precision companions (``lawm.quantize``): reference.npz (inputs drawn from
    the data and the fp32 actions for them), the calibrated policy.int8.onnx when one keeps
    within ``tolerance`` and calibration.json, recorded with their sha256 under
    ``low_precision`` in the sidecar. Without data the export holds none and the runtime runs
    fp32 only (no reference to check a lower precision against).

    Writes policy.onnx, then (``text_encoder``) the text encoder's files, then policy.json
    last, into a staging folder that then replaces ``out_dir`` as a whole (``atomic_dir``).
    Returns the sidecar written. The graph's inputs, proprio layout,
    control rate and gripper convention come from the training run's record
    (``resolve_inputs``, ``resolve_control_rate``, ``resolve_action_space``);
    ``action_space`` (``contract.ACTION_KINDS``) sets or overrides the recorded kind and
    ``control_rate_hz`` gives the rate of a run that recorded none. ExportError, before
    anything is written, for an unknown action space or a malformed record, and when
    onnxruntime and the training forward disagree by more than PARITY_TOLERANCE (the graph
    is then not written).
    """
    policy_dir = Path(policy_dir)
    if not 0 < tolerance <= contract.MAX_PARITY_TOLERANCE:
        raise ExportError(
            f"parity tolerance {tolerance!r}: must be > 0 and at most "
            f"{contract.MAX_PARITY_TOLERANCE} (normalised action units)"
        )
    policy, cfg, info = load_policy(policy_dir)
    space = resolve_action_space(policy_dir, info, action_space)
    rate = resolve_control_rate(policy_dir, info, cfg, control_rate_hz)
    inputs = resolve_inputs(policy_dir, cfg, info)
    policy.eval()
    final_dir = Path(out_dir)
    # Written into a staging folder that replaces out_dir whole: a kill or a full disk
    # leaves the previous export (or none), never a mix of old and new files.
    with atomic_dir(final_dir) as out_dir:
        out_dir.mkdir()
        wrapper = OnnxPolicy(policy, inputs).eval()
        names = inputs.names
        example = example_inputs(policy, batch=1, inputs=inputs)
        dynamic = {n: {0: BATCH} for n in names}
        dynamic[contract.ONNX_ACTION_OUTPUT] = {0: BATCH}
        onnx_path = out_dir / contract.ONNX_FILE
        with atomic_path(onnx_path) as tmp, torch.no_grad():
            torch.onnx.export(
                wrapper,
                tuple(torch.from_numpy(example[n]) for n in names),
                str(tmp),
                input_names=names,
                output_names=[contract.ONNX_ACTION_OUTPUT],
                dynamic_axes=dynamic,
                opset_version=opset,
                dynamo=False,
            )
            err = check_parity(policy, tmp, inputs=inputs)
            if not err <= PARITY_TOLERANCE:
                raise ExportError(
                    f"the exported graph and the training forward differ by up to {err:.2e} "
                    f"(> {PARITY_TOLERANCE}); nothing written to {final_dir}"
                )

        pc = cfg.policy
        low_precision = None
        if data is not None:
            try:
                reference, calibration = draw_frames(
                    data,
                    inputs.cameras,
                    inputs.proprio_layout,
                    pc.image_size,
                    pc.lang_dim,
                    lang_cache,
                    (REFERENCE_COUNT, CALIBRATION_COUNT),
                )
            except CalibrationError as err:
                raise ExportError(
                    f"the data cannot give reference and calibration frames: {err}; export "
                    "without --data for an fp32-only model"
                ) from err
            low_precision = write_companions(out_dir, reference, calibration, tolerance, say=say)
        text_sidecar = export_text_encoder(out_dir) if text_encoder else None
        stats: dict[str, Any] = {k: tuple(getattr(policy, k).tolist()) for k in Normalization.KEYS}
        if not inputs.proprio:
            stats.update(proprio_mean=(), proprio_std=())
        sidecar = PolicySidecar(
            onnx_sha256=sha256_file(onnx_path),
            opset=opset,
            cameras=inputs.cameras,
            image_size=pc.image_size,
            chunk_size=pc.chunk_size,
            action_dim=pc.action_dim,
            action_space=space,
            control_rate_hz=rate,
            proprio_dim=pc.proprio_dim if inputs.proprio else 0,
            proprio_layout=inputs.proprio_layout,
            lang_dim=pc.lang_dim,
            normalization=Normalization(**stats),
            text_encoder=text_sidecar,
            low_precision=low_precision,
            parity_max_abs_error=err,
            preset=cfg.preset,
            run=info,
            exported_at=_utc_now(),
            torch_version=torch.__version__,
        )
        sidecar.write(out_dir)
    return sidecar


# -- text encoder ---------------------------------------------------------------------------
def onnx_parity(
    model: MiniLM, tokenizer: MiniLMTokenizer, onnx_path: Path, texts: Sequence[str]
) -> float:
    """Max abs difference between torch and onnxruntime embeddings of ``texts``.

    Checked as one padded batch and one text at a time, so both dynamic axes are exercised.
    """
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    err = 0.0
    groups = [list(texts)] + [[t] for t in texts]
    for group in groups:
        feed = tokenizer(group)
        with torch.no_grad():
            ref = model(*(torch.from_numpy(feed[n]) for n in TEXT_INPUT_NAMES)).numpy()
        got = sess.run([TEXT_OUTPUT_NAME], feed)[0]
        if got.shape != ref.shape:
            return math.inf
        err = max(err, float(np.abs(ref - got).max()))
    return err


def export_text_encoder(out_dir: Path, opset: int = 17) -> TextEncoderSidecar:
    """Write text_encoder.onnx, tokenizer.json and text_encoder.json into ``out_dir``.

    ``text_encoder.onnx``: input_ids, attention_mask int64 (batch, sequence) -> embedding
    float32 (batch, 384). The sidecar records hashes, dimensions, max_length and opset; the
    robot runtime refuses files whose sha256 does not match it. Every file is written to a
    temporary name and renamed into place, the sidecar last. ExportError if onnxruntime and
    torch disagree by more than PARITY_TOLERANCE. Returns the sidecar written.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = find_minilm_dir()
    model = MiniLM(model_dir)
    tokenizer = MiniLMTokenizer(model_dir, MAX_LENGTH)
    # Two texts of different lengths: the traced example contains real padding.
    example = tokenizer(list(_PARITY_SENTENCES[:2]))
    dynamic = {n: {0: BATCH, 1: SEQUENCE} for n in TEXT_INPUT_NAMES}
    dynamic[TEXT_OUTPUT_NAME] = {0: BATCH}

    onnx_path = out_dir / TextEncoderSidecar.ONNX_FILE
    with atomic_path(onnx_path) as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo (which needs
            # onnxscript, not installed); it still works and is what export_policy uses too.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                tuple(torch.from_numpy(example[n]) for n in TEXT_INPUT_NAMES),
                str(tmp),
                input_names=list(TEXT_INPUT_NAMES),
                output_names=[TEXT_OUTPUT_NAME],
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        # Checked before the rename: a graph that disagrees with torch never lands in out_dir.
        err = onnx_parity(model, tokenizer, tmp, _PARITY_SENTENCES)
        if not err <= PARITY_TOLERANCE:
            raise ExportError(
                f"text encoder: torch vs onnxruntime max abs error {err:.2e} > {PARITY_TOLERANCE}"
            )
    tokenizer_path = out_dir / TextEncoderSidecar.TOKENIZER_FILE
    with atomic_path(tokenizer_path) as tmp:
        shutil.copyfile(tokenizer.path, tmp)

    sidecar = TextEncoderSidecar(
        onnx_sha256=sha256_file(onnx_path),
        tokenizer_sha256=sha256_file(tokenizer_path),
        weights_sha256=sha256_file(model_dir / "model.safetensors"),
        model=MODEL_NAME,
        embedding_dim=model.dim,
        max_length=MAX_LENGTH,
        opset=opset,
        parity_max_abs_error=err,
        export_seconds=round(time.perf_counter() - t0, 3),
        exported_at=_utc_now(),
        torch_version=torch.__version__,
    )
    # Written last: while a re-export replaces the files, the old sidecar no longer matches
    # them and the runtime refuses the folder instead of loading a mix of old and new.
    sidecar.write(out_dir)
    return sidecar
