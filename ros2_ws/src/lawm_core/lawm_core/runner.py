"""One control step of an exported policy: images in, the action to execute out.

``PolicyRunner.step`` is the chain every consumer of an exported model runs once per control
step (the ROS policy node on its timer, the closed-loop simulation evaluation, an offline
replay of recorded frames): fit each camera's image to the model's size, predict a chunk of
actions, aggregate it with the chunks of the previous steps (``TemporalAggregator``) and
denormalise the result to the training data's units.

It also decides when the stored chunks no longer apply and the aggregation restarts:

- a step that cannot act (a model camera, the proprio or the instruction missing or stale; an
  input refused as malformed): nothing to execute, and the chunks from before the pause are
  dropped. Only the model's inputs count: a camera the model does not take, and the proprio of
  a model without robot state (``PolicyModel.has_proprio`` False), are ignored, given or stale;
- a step more than ``max_gap_s`` after the previous acting step (a stalled loop, a gap in a
  recording), or before it (a restarted simulation's clock): the chunks were predicted for
  other times, so only this step's chunk is used.

The caller owns the clock (``now_s``: ROS time, simulated time, a recording's stamps), the
instruction embedding (``text_encoder``) and what is done with the action (``command``,
``safety``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from lawm_core import contract
from lawm_core.aggregation import TemporalAggregator
from lawm_core.errors import InputError
from lawm_core.model import PolicyModel
from lawm_core.preprocess import fit_image

PROPRIO = "proprio"
INSTRUCTION = "instruction"


@dataclass(frozen=True)
class StepResult:
    """What one ``PolicyRunner.step`` decided.

    Acted (``acted`` True): ``action`` float64 (A,) normalised in [-1, 1], the aggregated
    action to execute now; ``raw`` float64 (A,) the same in the training data's units;
    ``chunk`` float32 (K, A) the chunk predicted at this step; ``n_chunks`` the number of
    chunks averaged into ``action`` (1..K).

    Not acted: ``action``, ``raw`` and ``chunk`` are None and ``reason`` says why: ``missing``
    names the inputs that were absent or stale (model cameras, ``"proprio"``,
    ``"instruction"``), or ``error`` says which input was refused and why.

    ``reset``: why the stored chunks were dropped at this step (None: nothing was dropped).
    ``was_missing``: the previous step lacked inputs (True at the first step), so a caller can
    report the moment inputs go missing or come back. ``seconds``: time spent fitting,
    predicting, aggregating and denormalising (0 when inputs were missing).
    """

    now_s: float
    action: np.ndarray | None = None
    raw: np.ndarray | None = None
    chunk: np.ndarray | None = None
    n_chunks: int = 0
    missing: tuple[str, ...] = ()
    error: str | None = None
    reset: str | None = None
    was_missing: bool = False
    seconds: float = 0.0

    @property
    def acted(self) -> bool:
        return self.action is not None

    @property
    def reason(self) -> str | None:
        """Why there is no action (None when there is one)."""
        if self.missing:
            return f"stale or missing inputs: {list(self.missing)}"
        return self.error


class PolicyRunner:
    """An exported policy run step by step, with temporal aggregation.

    Args:
        model: the loaded policy.
        max_gap_s: the aggregation restarts when a step comes more than this after the previous
            acting step; None: two of the model's control periods (``2 / control_rate_hz``).

    Attributes: ``model``, ``max_gap_s``, ``proprio_mean`` float32 (P,) (what a model with
    robot state gets when none is given; empty for a model without robot state).
    """

    def __init__(self, model: PolicyModel, max_gap_s: float | None = None) -> None:
        if max_gap_s is None:
            max_gap_s = 2.0 / model.control_rate_hz
        try:
            gap = float(max_gap_s)
        except (TypeError, ValueError) as err:
            raise ValueError(f"max_gap_s must be a number of seconds, got {max_gap_s!r}") from err
        if not (math.isfinite(gap) and gap > 0):
            raise ValueError(f"max_gap_s must be finite and > 0, got {max_gap_s!r}")
        self.model = model
        self.max_gap_s = gap
        self.proprio_mean = np.asarray(model.spec.normalization.proprio_mean, dtype=np.float32)
        self._aggregator = TemporalAggregator(model.chunk_size, model.action_dim)
        # Inputs a caller may report stale that this model does not take.
        unused = [c for c in contract.CAMERAS if c not in model.cameras]
        self._unused = frozenset(unused if model.has_proprio else [*unused, PROPRIO])
        self._last_acted_s: float | None = None  # time of the step that stored the newest chunk
        self._was_missing = True

    def reset(self) -> None:
        """Drop the stored chunks (a new episode or instruction, an operator's reset)."""
        self._aggregator.reset()
        self._last_acted_s = None

    def step(
        self,
        images: Mapping[str, np.ndarray],
        proprio: np.ndarray | None,
        lang: np.ndarray | None,
        now_s: float,
        stale: Iterable[str] = (),
    ) -> StepResult:
        """Decide the action for the step at ``now_s`` (seconds on the caller's clock).

        ``images``: camera -> uint8 (H, W, 3) RGB of any size (fitted to the model's size as
        in training); cameras the model does not use are ignored. ``proprio``: (P,) raw robot
        state in ``model.proprio_layout`` order, or None for the training mean; ignored for a
        model without robot state. ``lang``: (lang_dim,) instruction embedding, or None when
        there is no instruction yet. ``stale``: inputs the caller found too old (a model camera
        named here counts as missing even if its image is given; a camera in
        ``contract.CAMERAS`` the model does not take, and ``"proprio"`` for a model without
        robot state, are ignored).

        Never raises for bad input: a missing input or an ``InputError`` gives a result without
        action (see ``StepResult``). ValueError only for a non-finite ``now_s``.
        """
        try:
            now = float(now_s)
        except (TypeError, ValueError) as err:
            raise ValueError(f"now_s must be a number of seconds, got {now_s!r}") from err
        if not math.isfinite(now):
            raise ValueError(f"now_s must be finite, got {now_s!r}")
        was_missing, self._was_missing = self._was_missing, False
        cameras = self.model.cameras
        stale = tuple(s for s in stale if s not in self._unused)
        missing = [c for c in cameras if c not in images or c in stale]
        missing += [s for s in dict.fromkeys(stale) if s not in cameras]
        if lang is None:
            missing.append(INSTRUCTION)
        if missing:
            self._was_missing = True
            return StepResult(
                now,
                missing=tuple(missing),
                reset=self._drop("inputs missing"),
                was_missing=was_missing,
            )

        t0 = time.perf_counter()
        reset = None
        try:
            fitted = {c: fit_image(images[c], self.model.image_size) for c in cameras}
            if not self.model.has_proprio:
                proprio = None
            elif proprio is None:
                proprio = self.proprio_mean
            chunk = self.model.predict(fitted, proprio, lang)
            reset = self._time_check(now)
            action = self._aggregator.step(chunk)
            raw = self.model.denormalize(action)
        except InputError as err:
            reset = self._drop("input refused") or reset
            return StepResult(now, error=str(err), reset=reset, was_missing=was_missing)
        self._last_acted_s = now
        return StepResult(
            now,
            action=action,
            raw=raw,
            chunk=chunk,
            n_chunks=len(self._aggregator),
            reset=reset,
            was_missing=was_missing,
            seconds=time.perf_counter() - t0,
        )

    def _drop(self, why: str) -> str | None:
        """Reset; ``why`` if chunks were stored, else None."""
        had = len(self._aggregator) > 0
        self.reset()
        return why if had else None

    def _time_check(self, now: float) -> str | None:
        """Reset if ``now`` is too long after, or before, the previous acting step."""
        last = self._last_acted_s
        if last is None:
            return None
        if now < last:
            return self._drop(f"clock went back {last - now:.3f} s")
        if now - last > self.max_gap_s:
            return self._drop(f"gap of {now - last:.3f} s (max {self.max_gap_s:.3f} s)")
        return None
