"""What a run writes while it trains: metrics.csv, log.jsonl, eval.csv and TensorBoard events.

Only the main process (rank 0) writes.  A fresh run (step 0) starts the files anew; a resumed
run appends to them, after dropping rows (metrics.csv, eval.csv) and JSON lines (log.jsonl)
beyond its resume step (left by the interrupted attempt), so each step appears once.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["RunLogger", "METRIC_COLUMNS"]

METRIC_COLUMNS = [
    "step", "epoch", "loss", "lr", "weight_decay", "momentum", "teacher_temp", "pairs",
    "queries_per_view", "teacher_entropy", "teacher_batch_entropy", "teacher_view_entropy", "grad_norm",
    "seconds_per_step", "gpu_memory_mb",
]


def _truncate_csv(path: Path, last_step: int) -> None:
    """Drop rows whose ``step`` is after ``last_step`` (a resumed run rewrites them)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    head, body = rows[0], rows[1:]
    kept = [r for r in body if r and r[0].isdigit() and int(r[0]) <= last_step]
    if len(kept) == len(body):
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        w.writerows(kept)
    tmp.replace(path)


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop JSON lines whose ``step`` is after ``last_step`` (and lines cut short by a crash)."""
    if not path.is_file():
        return
    kept, dropped = [], False
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            step = int(record.get("step", 0))
        except (ValueError, TypeError, AttributeError):
            dropped = True
            continue
        if step > last_step:
            dropped = True
            continue
        kept.append(line)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)


class RunLogger:
    """Rows of metrics to CSV / JSON lines / TensorBoard; no-ops off the main process.

    Parameters
    ----------
    output_dir : Path
    enabled : bool
        False on ranks other than 0.
    tensorboard : bool
        Write TensorBoard events to ``output_dir/tensorboard`` when tensorboard is installed
        (a one-line note otherwise).
    start_step : int
        The step a resumed run starts from (rows after it are dropped).
    columns : list of str, optional
        Columns of ``metrics.csv`` (default :data:`METRIC_COLUMNS`; a recipe adds its own).
    """

    def __init__(self, output_dir: Path, enabled: bool, tensorboard: bool, start_step: int = 0,
                 columns: list[str] | None = None) -> None:
        self.dir = Path(output_dir)
        self.columns = list(columns or METRIC_COLUMNS)
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.metrics_path = self.dir / "metrics.csv"
        self.eval_path = self.dir / "eval.csv"
        for p in (self.metrics_path, self.eval_path):
            if start_step == 0:  # a fresh run replaces the files of an earlier one
                p.unlink(missing_ok=True)
            else:
                _truncate_csv(p, start_step)
        if start_step == 0:
            (self.dir / "log.jsonl").unlink(missing_ok=True)
        else:
            _truncate_jsonl(self.dir / "log.jsonl", start_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("note: tensorboard is not installed; pip install tensorboard for TensorBoard logs",
                      file=sys.stderr)
            else:
                self.writer = SummaryWriter(str(self.dir / "tensorboard"), purge_step=start_step or None)

    def _append_csv(self, path: Path, columns: list[str], row: dict) -> None:
        new = not path.is_file() or path.stat().st_size == 0
        if not new:
            with open(path, newline="") as f:
                columns = next(csv.reader(f))
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: _fmt(row.get(k, "")) for k in columns})

    def _jsonl(self, record: dict) -> None:
        with open(self.dir / "log.jsonl", "a") as f:
            f.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")

    def metrics(self, row: dict) -> None:
        """One training row (``step`` and the columns of :data:`METRIC_COLUMNS`)."""
        if not self.enabled:
            return
        self._append_csv(self.metrics_path, self.columns, row)
        self._jsonl({"kind": "train", **row})
        if self.writer is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(f"train/{k}", v, row["step"])

    def evaluation(self, row: dict) -> None:
        """One evaluation row (``step``, ``what`` and scores)."""
        if not self.enabled:
            return
        columns = ["step", "what", "miou", "pixel_accuracy"]
        self._append_csv(self.eval_path, columns, row)
        self._jsonl({"kind": "eval", **row})
        if self.writer is not None:
            for k in ("miou", "pixel_accuracy"):
                if isinstance(row.get(k), float):
                    self.writer.add_scalar(f"eval/{row['what']}_{k}", row[k], row["step"])

    def text(self, record: dict) -> None:
        """Anything else worth keeping (the run's start, resume, end) as a JSON line."""
        if self.enabled:
            self._jsonl(record)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    return v


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, Path):
        return str(v)
    return v
