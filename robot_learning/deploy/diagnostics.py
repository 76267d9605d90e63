"""Control-loop diagnostics: loop rate, jitter, inference latency histogram, late/dropped actions."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np

# Inference latency histogram bucket upper edges, milliseconds (last bucket is open-ended).
LATENCY_EDGES_MS = (5, 10, 20, 50, 100, 200, 500, 1000)


class LoopDiagnostics:
    """Rolling figures about the control loop and the inference worker (thread-safe)."""

    def __init__(self, period_s: float, window: int = 500) -> None:
        self.period_s = period_s
        self._ticks: deque[float] = deque(maxlen=window)
        self._infer_ms: deque[float] = deque(maxlen=window)
        self._hist = np.zeros(len(LATENCY_EDGES_MS) + 1, dtype=np.int64)
        self._lock = threading.Lock()
        self.tick_count = 0  # since start-up (the windowed figures forget old ticks)
        self.inference_count = 0
        self.inference_errors = 0
        self.last_inference_error = ""

    def tick(self, t: float) -> None:
        """Record the wall time of one control tick."""
        with self._lock:
            self._ticks.append(t)
            self.tick_count += 1

    def inference(self, ms: float) -> None:
        """Record one inference latency."""
        with self._lock:
            self._infer_ms.append(ms)
            self.inference_count += 1
            self._hist[int(np.searchsorted(LATENCY_EDGES_MS, ms, side="left"))] += 1

    def inference_error(self, text: str) -> None:
        """Record a failed inference (server down, policy exception)."""
        with self._lock:
            self.inference_errors += 1
            self.last_inference_error = text

    def loop_figures(self) -> dict[str, float]:
        """Loop rate (Hz) and jitter (|interval - period|, ms) p50/p99/max over the window."""
        with self._lock:
            ticks = np.asarray(self._ticks)
        if len(ticks) < 2:
            return {"loop_hz": float("nan"), "jitter_p50_ms": float("nan"), "jitter_p99_ms": float("nan"),
                    "jitter_max_ms": float("nan")}
        intervals = np.diff(ticks)
        jitter = np.abs(intervals - self.period_s) * 1e3
        return {
            "loop_hz": float(1.0 / intervals.mean()),
            "jitter_p50_ms": float(np.percentile(jitter, 50)),
            "jitter_p99_ms": float(np.percentile(jitter, 99)),
            "jitter_max_ms": float(jitter.max()),
        }

    def inference_figures(self) -> dict[str, Any]:
        """Inference latency p50/p99 and the cumulative histogram."""
        with self._lock:
            ms = np.asarray(self._infer_ms)
            hist = self._hist.tolist()
        labels = [f"<={e}ms" for e in LATENCY_EDGES_MS] + [f">{LATENCY_EDGES_MS[-1]}ms"]
        return {
            "inference_p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
            "inference_p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
            "inference_histogram": dict(zip(labels, hist, strict=True)),
            "inference_errors": self.inference_errors,
            "last_inference_error": self.last_inference_error,
        }
