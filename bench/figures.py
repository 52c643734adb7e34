#!/usr/bin/env python3
"""The README's pictures, drawn from finished runs (not a benchmark):

    python bench/figures.py [--run runs/bench_learning/seeds/in_domain/pretrain_kinematic_s1500_p0]
                            [--heldout .cache/demo/heldout_libero_object_t0-1_i25-34_64px.hdf5]
                            [--out docs/img]

- ``world_model_open_loop.jpg``: the pretrained world model's open-loop prediction of held-out
  LIBERO windows from frame t and the policy's latent chunk (what the TensorBoard image shows
  during pretraining), each window's real frames above it;
- ``episode.png`` (``--episode FILE.mcap``): a recorded episode's cameras above its actions;
- ``probe.png``: the diagnostics of every pretraining run's ``probe.json`` under the runs folder:
  held-out probe R^2 of the true action chunk from the latent chunk, the trunk, the same
  network untrained and proprio alone; world-model loss with the policy's chunk against
  another time's, another episode's, another task's and zeros.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUN = ROOT / "runs/bench_learning/seeds/in_domain/pretrain_kinematic_s1500_p0"
DEFAULT_HELDOUT = ROOT / ".cache/demo/heldout_libero_object_t0-1_i25-34_64px.hdf5"


def open_loop_figure(run: Path, heldout: Path, out: Path, windows: int = 2) -> Path:
    import cv2
    import torch

    from lawm import keys
    from lawm.board import prediction_strip
    from lawm.checkpoint import load_policy
    from lawm.data import WindowDataset, collate, open_sources
    from lawm.objectives import PretrainObjective
    from lawm.probe import load_world_model
    from lawm.trainer import LangTable

    policy, cfg, _ = load_policy(run / "policy")
    wm = load_world_model(run / "world_model.safetensors", cfg)
    obj = PretrainObjective(cfg, policy=policy, world_model=wm)
    sources = open_sources(heldout, labelled=False)
    pc = cfg.policy
    ds = WindowDataset(sources, pc.cameras, pc.image_size, pc.chunk_size, "pretrain",
                       proprio_dim=pc.proprio_dim)  # fmt: skip
    # Windows from the middle of episodes of both tasks, where the arm moves.
    starts = np.cumsum([0] + [max(s.length - 1, 0) for s in sources])
    pick = [
        int(starts[i] + sources[i].length // 3)
        for i in np.linspace(0, len(sources) - 1, windows).astype(int)
    ]
    batch = collate([ds[i] for i in pick])
    lang = LangTable([s.instruction for s in sources], None, pc.lang_dim)
    batch[keys.LANG] = lang(batch[keys.INSTRUCTION])
    with torch.no_grad():
        target, guess = obj.open_loop(batch, n=windows)
    strip = prediction_strip(target.numpy(), guess.numpy())
    out.mkdir(parents=True, exist_ok=True)
    path = out / "world_model_open_loop.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def _grouped_bars(ax, probes: list, field: str, keys: list[tuple[str, str]]) -> None:
    """One bar per run in each group ``keys`` ((figure key, label)) of ``probe[field]``."""
    width = 0.8 / len(probes)
    for i, (name, p) in enumerate(probes):
        vals = [p[field][k] for k, _ in keys]
        ax.bar(np.arange(len(keys)) + i * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(keys)) + width * (len(probes) - 1) / 2, [t for _, t in keys])


def probe_figure(runs: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = sorted(runs.glob("**/pretrain_kinematic_s*_p*/probe.json"))
    if not found:
        raise SystemExit(f"no pretrain_kinematic_*/probe.json under {runs}")
    probes = [
        (f"{p.parts[-4]}: {p.parent.parent.name} {p.parent.name[-2:]}", json.loads(p.read_text()))
        for p in found
    ]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    r2_keys = [("latent", "latent chunk"), ("trunk", "trunk"),
               ("untrained_latent", "untrained chunk"), ("proprio", "proprio")]  # fmt: skip
    _grouped_bars(a, probes, "probe_r2", r2_keys)
    a.set_ylabel("held-out probe R^2 of the action chunk")
    a.set_ylim(0, 1)
    a.legend(fontsize=7)
    wm_keys = [("policy", "own chunk"), ("same_episode_other_time", "other time"),
               ("other_episode", "other episode"), ("other_task", "other task"),
               ("zeros", "zeros")]  # fmt: skip
    _grouped_bars(b, probes, "wm_loss", wm_keys)
    b.set_ylabel("world-model loss on held-out windows")
    fig.suptitle("kinematic world model, LIBERO (per setting / pretraining seed)")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "probe.png"
    fig.savefig(path, dpi=110)
    return path


def episode_figure(mcap: Path, out: Path, every: int = 15) -> Path:
    """An episode file as ``episode.png``: the cameras every ``every`` steps above the actions
    over time (what Foxglove or Rerun show on their timeline)."""
    import base64

    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mcap.reader import make_reader

    topics: dict[str, list[dict]] = {}
    with open(mcap, "rb") as f:
        for _, channel, msg in make_reader(f).iter_messages():
            topics.setdefault(channel.topic, []).append(json.loads(msg.data))
    cams = sorted(t for t in topics if t.startswith("/camera/"))

    def frame(m: dict) -> np.ndarray:
        png = np.frombuffer(base64.b64decode(m["data"]), np.uint8)
        return cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    rows = [np.concatenate([frame(m) for m in topics[c][::every]], axis=1) for c in cams]
    actions = topics.get("/action", [])
    fig, (a, b) = plt.subplots(2, 1, figsize=(10, 5.2), height_ratios=[len(cams), 1.4])
    a.imshow(np.concatenate(rows, axis=0))
    a.set_axis_off()
    outcome = topics.get("/outcome", [{}])[0]
    text = topics.get("/instruction", [{"text": ""}])[0]["text"]
    a.set_title(f"{text!r}: {outcome}", fontsize=8)
    for name in ("dx", "dy", "dz", "gripper"):
        b.plot([m[name] for m in actions], label=name)
    b.set_xlabel("step (20 Hz)")
    b.set_ylabel("commanded action")
    b.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    path = out / "episode.png"
    fig.savefig(path, dpi=100)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=DEFAULT_RUN, help="a pretraining run")
    p.add_argument("--heldout", type=Path, default=DEFAULT_HELDOUT, help="held-out episodes")
    p.add_argument("--runs", type=Path, default=ROOT / "runs/bench_learning",
                   help="where the probe.json files are")  # fmt: skip
    p.add_argument("--out", type=Path, default=ROOT / "docs/img")
    p.add_argument("--episode", type=Path, help="an episode .mcap (eval-sim --record) to draw")
    args = p.parse_args(argv)
    print(open_loop_figure(args.run, args.heldout, args.out))
    print(probe_figure(args.runs, args.out))
    if args.episode:
        print(episode_figure(args.episode, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
