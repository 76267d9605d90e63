"""What the policy node fed the policy and what it executed, per episode: the parity instrument.

``DeployTrace`` records every inference (the exact policy input, the capture stamp of the sample in
every history slot, the observation stamp, the chunk's arrival and the chunk) and every control tick
(time, command, control source) and writes one ``episode_<n>.npz`` per episode. ``replay`` feeds
the recorded inputs through a policy directly and reports how far its chunks are from the node's,
which separates "the node fed the policy something else" from "the node executed it differently".
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np


class DeployTrace:
    """Thread-safe recorder of inferences and ticks; ``flush`` writes the current episode."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.episode = -1
        self._inf: list[dict[str, Any]] = []
        self._ticks: list[tuple[float, np.ndarray | None, str]] = []

    def inference(self, obs: dict[str, np.ndarray], used: dict[str, np.ndarray], t_obs: float, arrived: float,
                  chunk: np.ndarray) -> None:
        """One inference: input, slot stamps, observation stamp, arrival time, chunk."""
        with self._lock:
            self._inf.append({"obs": {k: np.array(v) for k, v in obs.items()}, "used": dict(used),
                              "t_obs": t_obs, "arrived": arrived, "chunk": np.array(chunk)})

    def tick(self, now: float, action: np.ndarray | None, source: str) -> None:
        """One control tick."""
        with self._lock:
            self._ticks.append((now, None if action is None else np.array(action), source))

    def new_episode(self) -> None:
        """Write the episode recorded so far (if any) and start the next."""
        self.flush()
        with self._lock:
            self.episode += 1

    def flush(self) -> Path | None:
        """Write ``episode_<n>.npz``; None if nothing was recorded."""
        with self._lock:
            inf, ticks, self._inf, self._ticks = self._inf, self._ticks, [], []
            episode = self.episode
        if not inf or episode < 0:
            return None
        arrays: dict[str, np.ndarray] = {
            "t_obs": np.array([r["t_obs"] for r in inf]), "arrived": np.array([r["arrived"] for r in inf]),
            "chunks": np.stack([r["chunk"] for r in inf]),
            "tick_t": np.array([t for t, _, _ in ticks]),
            "tick_source": np.array([s for _, _, s in ticks]),
            "tick_action": np.stack([np.full(inf[0]["chunk"].shape[-1], np.nan) if a is None else a
                                     for _, a, _ in ticks]) if ticks else np.zeros((0, inf[0]["chunk"].shape[-1])),
        }
        for key in inf[0]["obs"]:
            arrays[f"obs/{key}"] = np.stack([r["obs"][key] for r in inf])
            arrays[f"used/{key}"] = np.stack([r["used"][key] for r in inf])
        path = self.out_dir / f"episode_{episode:04d}.npz"
        np.savez_compressed(path, **arrays)
        return path


def load_trace(path: str | Path) -> dict[str, Any]:
    """A written trace as a dict; observation inputs under ``obs`` (key -> (n_inferences, n_obs, ...))."""
    z = np.load(path)
    out: dict[str, Any] = {"obs": {}, "used": {}}
    for name in z.files:
        if name.startswith("obs/"):
            out["obs"][name[4:]] = z[name]
        elif name.startswith("used/"):
            out["used"][name[5:]] = z[name]
        else:
            out[name] = z[name]
    return out


def replay(policy: Any, trace: dict[str, Any]) -> float:
    """Largest |chunk difference| between the policy run directly on the node's inputs and the node's chunks."""
    worst = 0.0
    for i in range(len(trace["t_obs"])):
        obs = {k: v[i] for k, v in trace["obs"].items() if k in policy.spec.obs_shapes}
        policy.reset()
        chunk = np.asarray(policy.predict_chunk(obs), dtype=np.float64)
        worst = max(worst, float(np.max(np.abs(chunk - trace["chunks"][i]))))
    return worst


def slot_gaps(trace: dict[str, Any], dt: float) -> dict[str, np.ndarray]:
    """Per stream, the stamp gap between consecutive history slots in units of ``dt`` (1.0 = consecutive ticks)."""
    return {k: np.diff(v, axis=1).ravel() / dt for k, v in trace["used"].items() if v.shape[1] > 1}
