"""Every deployed episode becomes data: the policy node's ticks -> one store episode per episode.

At each control tick the node hands ``RolloutRecorder.on_tick`` the newest sample of every stream it
reads (with capture stamps), the command it executed (the operator's during a ``forward`` takeover;
the operator's last command, if seen, during ``yield``) and who was in control. Steps follow the
one step schema (``robot_learning/data/layout.py`` STEP_SCHEMA): ``reward`` 0 (labels are computed
later), ``done`` on the last step, ``terminal`` when the operator labelled the episode a success,
``intervention`` while a person is in control, ``control_source`` the code of policy/human/hold/estop.
A step whose streams are further apart than ``tolerance_s`` is stored and flagged (its index in
``tags.misaligned_steps`` with the measured spread), never silently. Writes happen on a thread, so a
tick never waits for the disk; a store error ends that episode (reported), never the node.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robot_learning.data.layout import schema_step


@dataclass
class RolloutConfig:
    """``deploy.record``: where rollouts go and how steps are checked."""

    store: str = ""  # episode store path or s3:// URL; "" or "none" = do not record
    task: str = ""
    operator: str = ""
    tolerance_s: float = 0.05  # streams of one step further apart than this are flagged
    image_codec: str = "jpeg"
    start: str = "now"  # now: record from the first tick; reset: from the first episode reset (sim runner)
    source: str = "policy"  # EpisodeMeta.source of the rollouts (arena: the arena's evaluator client)
    policy_id: str = ""  # stored policy id ("" = the policy source: checkpoint path, server URL or scripted name)
    instruction: str = ""
    tags: dict[str, Any] = field(default_factory=dict)  # extra tags of every episode (e.g. the arena session)

    def __post_init__(self) -> None:
        if self.start not in ("now", "reset"):
            raise ValueError(f"record.start: '{self.start}' is not now or reset")


@dataclass
class _Episode:
    steps: list[tuple[dict[str, np.ndarray], dict[str, float]]] = field(default_factory=list)
    misaligned: list[list[float]] = field(default_factory=list)
    label: bool | None = None
    labelled_by: str = ""
    interventions: int = 0


def step_fields(source: str, intervention: bool, done: bool = False, terminal: bool = False,
                reward: float = 0.0) -> dict[str, np.ndarray]:
    """The STEP_SCHEMA fields of one step, built by the store's own helper (StoreError on a bad source)."""
    return schema_step(reward=reward, done=done, terminal=terminal, intervention=intervention, control_source=source)


class RolloutRecorder:
    """Buffers one episode of ticks and commits it to the store with its label when the episode ends."""

    def __init__(self, config: RolloutConfig, policy_id: str, control_hz: float, log: Any = print) -> None:
        from robot_learning.data.store import EpisodeStore

        self.config, self.policy_id, self.control_hz, self.log = config, policy_id, control_hz, log
        self.store = EpisodeStore.open(config.store, mode="a", image_codec=config.image_codec)
        self._lock = threading.Lock()
        self._ep = _Episode()
        self._queue: queue.Queue[_Episode | None] = queue.Queue()
        self.committed: list[int] = []
        self._armed = config.start == "now"
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="rollout-writer", daemon=True)
        self._thread.start()

    def on_tick(self, now: float, obs: dict[str, np.ndarray], stamps: dict[str, float], action: np.ndarray,
                source: str, intervention: bool) -> None:
        """One executed control step."""
        if not self._armed or any(v is None for v in obs.values()) or action is None:
            return  # before the first episode / nothing observed or executed: not a step of a rollout
        data = {k: np.asarray(v) for k, v in obs.items()}
        data["action"] = np.asarray(action, dtype=np.float32)
        data.update(step_fields(source, intervention))
        st = {"step": now, **{k: float(stamps[k]) for k in obs}}
        spread = max(st[k] for k in obs) - min(st[k] for k in obs) if obs else 0.0
        with self._lock:
            if spread > self.config.tolerance_s:
                self._ep.misaligned.append([len(self._ep.steps), round(spread, 4)])
            self._ep.interventions += int(intervention and (not self._ep.steps or not bool(
                self._ep.steps[-1][0]["intervention"])))
            self._ep.steps.append((data, st))

    def label(self, success: bool, by: str = "operator") -> str:
        """Operator (or sim) success/failure label of the current episode; the latest label wins."""
        with self._lock:
            self._ep.label, self._ep.labelled_by = bool(success), by
            return f"episode labelled {'success' if success else 'failure'} by {by} ({len(self._ep.steps)} steps)"

    def end_episode(self) -> None:
        """Commit the current episode (if it has steps) on the writer thread and start the next."""
        with self._lock:
            ep, self._ep = self._ep, _Episode()
            self._armed = True
        if ep.steps:
            self._queue.put(ep)

    def _run(self) -> None:
        while True:
            ep = self._queue.get()
            if ep is None:
                return
            try:
                self.committed.append(self._write(ep))
            except Exception as exc:  # a store error loses this episode (reported), never the node
                self.errors.append(f"rollout not stored: {type(exc).__name__}: {exc}")
                self.log(self.errors[-1])

    def _write(self, ep: _Episode) -> int:
        from robot_learning.data.store import EpisodeMeta

        success = bool(ep.label)
        tags = {**self.config.tags, "label": "none" if ep.label is None else ("success" if ep.label else "failure"),
                "labelled_by": ep.labelled_by, "interventions": ep.interventions,
                "misaligned_steps": ep.misaligned, "tolerance_s": self.config.tolerance_s}
        meta = EpisodeMeta(task=self.config.task, source=self.config.source, operator=self.config.operator,
                           policy_id=self.config.policy_id or self.policy_id, instruction=self.config.instruction,
                           rates={"step": self.control_hz}, tags=tags)
        writer = self.store.begin_episode(meta)
        last = len(ep.steps) - 1
        try:
            for i, (data, st) in enumerate(ep.steps):
                if i == last:
                    data = {**data, "done": np.asarray(True), "terminal": np.asarray(success)}
                writer.append(data, st)
        except Exception:
            writer.discard()
            raise
        return writer.commit(success=success)

    def close(self) -> None:
        """Commit the open episode and wait for the writer."""
        self.end_episode()
        self._queue.put(None)
        self._thread.join(timeout=60)
        self.store.close()
