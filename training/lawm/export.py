"""Export a trained policy to ONNX with its sidecar (the contract the robot runtime checks).

``policy.onnx`` inputs (names from lawm.keys):
    image_<camera>: uint8 (B, H, W, 3) RGB upright, one per camera in ``cameras`` order
    proprio: float32 (B, 5) raw units (normalised inside the graph)
    lang: float32 (B, 384) sentence embedding (text_encoder.onnx gives it)
output:
    actions: float32 (B, K, 7), normalised action space, clamped to [-1, 1] inside the graph

``policy.json`` records names, shapes, cameras, image size, statistics, chunk size, control
rate, action layout, opset, the sha256 of policy.onnx and the run it came from.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lawm.checkpoint import load_policy
from lawm.models.policy import Policy
from lawm_core import contract
from lawm_core.files import atomic_path, atomic_write_text, sha256_file

SIDECAR_VERSION = 1
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    pass


class OnnxPolicy(nn.Module):
    """The graph we export: HWC uint8 images in, clamped normalised action chunk out."""

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self.policy = policy
        self.cameras = policy.cfg.cameras

    def forward(self, *args: Tensor) -> Tensor:
        n = len(self.cameras)
        images = {c: args[i].permute(0, 3, 1, 2) for i, c in enumerate(self.cameras)}
        proprio, lang = args[n], args[n + 1]
        return self.policy(images, proprio, lang).clamp(-1.0, 1.0)


def example_inputs(policy: Policy, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    cfg = policy.cfg
    rng = np.random.default_rng(seed)
    s = cfg.image_size
    out = {
        contract.onnx_image_input(c): rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8)
        for c in cfg.cameras
    }
    out[contract.ONNX_PROPRIO_INPUT] = rng.normal(size=(batch, cfg.proprio_dim)).astype(np.float32)
    lang = rng.normal(size=(batch, cfg.lang_dim)).astype(np.float32)
    out[contract.ONNX_LANG_INPUT] = lang / np.linalg.norm(lang, axis=1, keepdims=True)
    return out


def input_names(policy: Policy) -> list[str]:
    return [contract.onnx_image_input(c) for c in policy.cfg.cameras] + [
        contract.ONNX_PROPRIO_INPUT,
        contract.ONNX_LANG_INPUT,
    ]


def check_parity(policy: Policy, onnx_path: Path, seed: int = 0, batch: int = 2) -> float:
    """Max abs difference between torch and onnxruntime on seeded inputs."""
    import onnxruntime as ort

    wrapper = OnnxPolicy(policy).eval()
    inputs = example_inputs(policy, batch=batch, seed=seed)
    names = input_names(policy)
    with torch.no_grad():
        ref = wrapper(*[torch.from_numpy(inputs[n]) for n in names]).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run([contract.ONNX_ACTION_OUTPUT], inputs)[0]
    return float(np.abs(ref - got).max())


def export_policy(
    policy_dir: Path,
    out_dir: Path,
    *,
    opset: int = 17,
    text_encoder: bool = True,
    control_rate_hz: float | None = None,
) -> dict[str, Any]:
    """Export ``policy_dir`` (model.safetensors + config.json) into ``out_dir``."""
    policy, cfg, info = load_policy(policy_dir)
    policy.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapper = OnnxPolicy(policy).eval()
    names = input_names(policy)
    example = example_inputs(policy, batch=1)
    dynamic = {n: {0: "batch"} for n in names}
    dynamic[contract.ONNX_ACTION_OUTPUT] = {0: "batch"}
    onnx_path = out_dir / "policy.onnx"
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
        err = check_parity(policy, tmp)
        if not err <= PARITY_TOLERANCE:
            raise ExportError(f"torch vs onnxruntime max abs error {err:.2e} > {PARITY_TOLERANCE}")

    pc = cfg.policy
    s = pc.image_size
    sidecar: dict[str, Any] = {
        "format_version": SIDECAR_VERSION,
        "model": "lawm-policy",
        "onnx_file": "policy.onnx",
        "onnx_sha256": sha256_file(onnx_path),
        "opset": opset,
        "chunk_size": pc.chunk_size,
        "action_dim": pc.action_dim,
        "action_layout": list(contract.ACTION_LAYOUT),
        "action_space": "normalized [-1, 1]; raw = (a + 1) / 2 * (max - min) + min",
        "control_rate_hz": float(control_rate_hz or pc.control_rate_hz),
        "cameras": list(pc.cameras),
        "image_size": s,
        "image_format": "uint8 RGB, upright, (B, H, W, 3)",
        "proprio_dim": pc.proprio_dim,
        "proprio_layout": ["ee_x", "ee_y", "ee_z", "gripper_left", "gripper_right"],
        "lang_dim": pc.lang_dim,
        "inputs": [
            *[
                {
                    "name": contract.onnx_image_input(c),
                    "shape": ["batch", s, s, 3],
                    "dtype": "uint8",
                }
                for c in pc.cameras
            ],
            {
                "name": contract.ONNX_PROPRIO_INPUT,
                "shape": ["batch", pc.proprio_dim],
                "dtype": "float32",
            },
            {
                "name": contract.ONNX_LANG_INPUT,
                "shape": ["batch", pc.lang_dim],
                "dtype": "float32",
            },
        ],
        "outputs": [
            {
                "name": contract.ONNX_ACTION_OUTPUT,
                "shape": ["batch", pc.chunk_size, pc.action_dim],
                "dtype": "float32",
            }
        ],
        "normalization": {
            k: getattr(policy, k).tolist()
            for k in ("action_min", "action_max", "proprio_mean", "proprio_std")
        },
        "parity_max_abs_error": err,
        "preset": cfg.preset,
        "run": info,
        "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
    }
    if text_encoder:
        from lawm.language import export_text_encoder

        sidecar["text_encoder"] = export_text_encoder(out_dir)
    atomic_write_text(out_dir / "policy.json", json.dumps(sidecar, indent=2, sort_keys=True))
    return sidecar
