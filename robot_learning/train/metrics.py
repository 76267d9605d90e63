"""Metrics logs shared by the training loop and RL learners: TensorBoard + an append-only CSV.

Both are resume-aware: the CSV drops rows after the resumed step and TensorBoard purges events past
it, so a run killed and resumed has one row per logged step, none missing, none doubled.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TRAIN_FIELDS = ("step", "loss", "lr", "grad_norm", "ema_decay", "steps_per_s", "eval_success", "eval_ci_low",
                "eval_ci_high")


class CsvLog:
    """Append-only metrics CSV; on resume, rows after the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int, fields: Sequence[str] = TRAIN_FIELDS) -> None:
        self.path = Path(path)
        self.fields = list(fields)
        if "step" not in self.fields:
            raise ValueError("CsvLog fields must include 'step'")
        rows: list[dict[str, str]] = []
        if self.path.exists() and resume_step > 0:
            with self.path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows({k: r.get(k, "") for k in self.fields} for r in rows)

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (keys outside ``fields`` are ignored)."""
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow({k: row.get(k, "") for k in self.fields})


class MetricsLog:
    """TensorBoard scalars + CSV rows under ``out_dir`` (``tb/``, ``metrics.csv``); inert when not ``enabled``."""

    def __init__(self, out_dir: str | Path, start_step: int, fields: Sequence[str] = TRAIN_FIELDS,
                 enabled: bool = True, csv_name: str = "metrics.csv") -> None:
        self.enabled = enabled
        self.writer: Any = None
        self.csv: CsvLog | None = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(out / "tb"), purge_step=start_step + 1 if start_step else None)
            self.csv = CsvLog(out / csv_name, start_step, fields)

    def log(self, step: int, row: dict[str, Any], prefix: str = "train") -> None:
        """One CSV row and a TensorBoard scalar ``prefix/<key>`` per non-None value."""
        if not self.enabled:
            return
        for k, v in row.items():
            if k != "step" and v is not None and v != "":
                self.writer.add_scalar(f"{prefix}/{k}", v, step)
        self.csv.write({"step": step, **row})

    def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        """TensorBoard scalars only (no CSV row)."""
        if self.enabled:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self.writer is not None:
            self.writer.close()


def write_csv(path: Path, rows: list[dict[str, Any]], fields: tuple[str, ...] | None = None) -> None:
    """Rewrite ``path`` with ``rows`` (the resume state holds every row, so a kill never duplicates one)."""
    names = list(fields or dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        w.writerows(rows)
