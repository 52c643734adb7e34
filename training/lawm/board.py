"""Training curves for TensorBoard (and wandb, when installed and asked for), beside
``metrics.jsonl``.

Every training run writes TensorBoard event files under ``<run>/tensorboard/``: each logged
scalar (losses, learning rate, samples/s, gradient norm, latent-action statistics) as
``<stage>/<name>``, and during pretraining, every checkpoint, the world model's open-loop
prediction of a few windows next to their frames (``<stage>/world_model``: for each window, the
frames t..t+K above the model's frames from frame t and the policy's chunk). A resumed run
continues the same curves (steps past the resume point from the interrupted run are dropped).
Open them with ``tensorboard --logdir runs/``.

wandb: ``--wandb`` logs the same scalars and images to a wandb run in offline mode unless
``WANDB_MODE`` says otherwise (``wandb sync`` uploads later); it is never a dependency.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
BOARD_DIR = "tensorboard"


class BoardError(RuntimeError):
    """A requested logger is unavailable."""


class Board:
    """TensorBoard writer (and optionally wandb) for one run; methods are no-ops when closed."""

    def __init__(
        self,
        run_dir: Path,
        stage: str,
        start_step: int = 0,
        wandb: bool = False,
        config: dict[str, Any] | None = None,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.stage = stage
        self.dir = Path(run_dir) / BOARD_DIR
        # purge_step: a resumed run drops the interrupted run's points past its checkpoint
        # (the checkpoint holds step start_step, so its points stay).
        self.tb = SummaryWriter(str(self.dir), purge_step=start_step + 1 if start_step else None)
        self.wandb = None
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                self.tb.close()
                raise BoardError("--wandb needs the wandb package (pip install wandb)") from None
            os.environ.setdefault("WANDB_MODE", "offline")
            self.wandb = wandb_module.init(
                project="lawm", dir=str(run_dir), name=f"{Path(run_dir).name}-{stage}",
                config=config or {}, resume="allow",
            )  # fmt: skip

    def scalars(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            if key != "step" and isinstance(value, int | float) and np.isfinite(value):
                self.tb.add_scalar(f"{self.stage}/{key}", float(value), step)
        if self.wandb is not None:
            self.wandb.log({f"{self.stage}/{k}": v for k, v in values.items()}, step=step)

    def image(self, name: str, image: np.ndarray, step: int) -> None:
        """``image``: uint8 (H, W, 3)."""
        self.tb.add_image(f"{self.stage}/{name}", image, step, dataformats="HWC")
        if self.wandb is not None:
            import wandb as wandb_module

            self.wandb.log({f"{self.stage}/{name}": wandb_module.Image(image)}, step=step)

    def close(self) -> None:
        self.tb.flush()
        self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def prediction_strip(targets: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """(N, T, H, W, 3) uint8 targets and predictions -> one (2 N H, T W, 3) image: for each
    window, its frames above the prediction."""
    n, t, h, w, _ = targets.shape
    rows = []
    for i in range(n):
        rows.append(targets[i].transpose(1, 0, 2, 3).reshape(h, t * w, 3))
        rows.append(predictions[i].transpose(1, 0, 2, 3).reshape(h, t * w, 3))
    return np.concatenate(rows, axis=0)
