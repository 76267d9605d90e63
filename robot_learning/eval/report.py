"""Evaluation report: success with a Wilson 95 % interval, episode count, seeds, lengths, videos."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robot_learning.stats import format_rate, wilson_interval


@dataclass
class EpisodeResult:
    """Outcome of one evaluation episode."""

    seed: int
    success: bool
    length: int  # control steps taken (until success or the step limit)
    metrics: dict[str, float] = field(default_factory=dict)  # final value of each task metric
    max_metrics: dict[str, float] = field(default_factory=dict)  # best value reached during the episode
    video: str | None = None


@dataclass
class EvalReport:
    """All episodes of one evaluation, plus how it was run."""

    task: str
    dr: str
    episodes: list[EpisodeResult]
    agent: str = ""
    max_steps: int = 0
    n_procs: int = 1
    wall_time_s: float = 0.0
    robot_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def n_episodes(self) -> int:
        """Number of episodes."""
        return len(self.episodes)

    @property
    def seeds(self) -> list[int]:
        """Episode seeds in order."""
        return [e.seed for e in self.episodes]

    @property
    def successes(self) -> int:
        """Number of successful episodes."""
        return sum(e.success for e in self.episodes)

    @property
    def success_rate(self) -> float:
        """Fraction of successful episodes (nan when empty)."""
        return self.successes / self.n_episodes if self.n_episodes else float("nan")

    @property
    def ci95(self) -> tuple[float, float]:
        """Wilson 95 % interval of the success rate."""
        return wilson_interval(self.successes, self.n_episodes)

    @property
    def mean_length(self) -> float:
        """Mean episode length in control steps."""
        return float(np.mean([e.length for e in self.episodes])) if self.episodes else float("nan")

    @property
    def mean_success_length(self) -> float:
        """Mean length of the successful episodes only."""
        lengths = [e.length for e in self.episodes if e.success]
        return float(np.mean(lengths)) if lengths else float("nan")

    @property
    def videos(self) -> list[str]:
        """Paths of the recorded rollout videos."""
        return [e.video for e in self.episodes if e.video]

    def metric_means(self) -> dict[str, float]:
        """Mean over episodes of each task metric (final value) and of its best value (``max_<name>``)."""
        out: dict[str, float] = {}
        keys = sorted({k for e in self.episodes for k in e.metrics})
        for k in keys:
            out[k] = float(np.mean([e.metrics[k] for e in self.episodes if k in e.metrics]))
            out[f"max_{k}"] = float(np.mean([e.max_metrics[k] for e in self.episodes if k in e.max_metrics]))
        return out

    def summary(self) -> str:
        """Human-readable multi-line summary; the success rate always carries n, seeds and the Wilson CI."""
        lines = [
            f"task {self.task} | dr {self.dr} | agent {self.agent or '?'}",
            f"success {format_rate(self.successes, self.n_episodes, self.seeds)}",
            f"mean episode length {self.mean_length:.1f} steps (successful: {self.mean_success_length:.1f}; limit {self.max_steps})",
        ]
        for k, v in self.metric_means().items():
            lines.append(f"mean {k} {v:.3f}")
        if self.videos:
            lines.append("videos: " + ", ".join(self.videos))
        lines.append(f"{self.n_procs} process(es), {self.wall_time_s:.1f} s wall")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form including the derived figures."""
        d = asdict(self)
        d.update(
            n_episodes=self.n_episodes, successes=self.successes, success_rate=self.success_rate,
            ci95=list(self.ci95), mean_length=self.mean_length, seeds=self.seeds, videos=self.videos,
            metric_means=self.metric_means(), summary=self.summary(),
        )
        return d

    def to_json(self, path: str | Path) -> Path:
        """Write the report as JSON (creating parent folders) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> EvalReport:
        """Read a report written by ``to_json``."""
        d = json.loads(Path(path).read_text())
        episodes = [EpisodeResult(**e) for e in d["episodes"]]
        keep = {k: d[k] for k in ("task", "dr", "agent", "max_steps", "n_procs", "wall_time_s", "robot_kwargs") if k in d}
        return cls(episodes=episodes, **keep)
