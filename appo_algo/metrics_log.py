"""Namespaced training metrics to stdout, ``metrics.jsonl``, ``metrics.csv`` and TensorBoard."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Callable

STDOUT_KEYS = ("rollout/success_rate", "rollout/reward_mean", "branch/n", "branch/success_rate",
               "branch/omega_degenerate_frac", "adv/zero_std_frac", "train/loss", "faults/infra_failure_frac",
               "time/step_s", "time/tokens_per_s")


class MetricLogger:
    """One row per training step; JSONL is appended, CSV is rewritten when new columns appear."""

    def __init__(self, log_dir: str | Path, tensorboard: bool, stdout_every: int = 1,
                 echo: Callable[[str], None] = print):
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl, self.csv = self.dir / "metrics.jsonl", self.dir / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        self.header: list[str] = []
        self.stdout_every, self.echo = stdout_every, echo
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ValueError("tensorboard logging needs the `tensorboard` package: pip install tensorboard "
                                 "(or set tensorboard: false)") from e
            self.tb = SummaryWriter(str(self.dir / "tb"))

    def truncate_after(self, step: int) -> None:
        """Resume: keep the rows of steps <= ``step`` (later ones are recomputed) and rewrite both files."""
        if self.jsonl.exists():
            rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
            self.rows = [r for r in rows if r["step"] <= step]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        self.header = sorted({k for r in self.rows for k in r}, key=_column_order)
        self._rewrite_csv()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **metrics}
        self.rows.append(row)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if set(row) - set(self.header):
            self.header = sorted(set(self.header) | set(row), key=_column_order)
            self._rewrite_csv()
        else:
            with self.csv.open("a", newline="") as f:
                csv.DictWriter(f, self.header).writerow(row)
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.stdout_every and step % self.stdout_every == 0:
            shown = "  ".join(f"{k.split('/', 1)[1]}={metrics[k]:.4g}" for k in STDOUT_KEYS if k in metrics)
            self.echo(f"step {step:>5}  {shown}")

    def _rewrite_csv(self) -> None:
        with self.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, self.header)
            w.writeheader()
            w.writerows(self.rows)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _column_order(key: str) -> tuple[int, str]:
    return (0 if key == "step" else 1, key)
