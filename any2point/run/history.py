"""Per-epoch metrics of a run: a CSV table and TensorBoard scalars, both resumable."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..atomic import atomic_write_text

__all__ = ["EpochHistory", "HISTORY_CSV", "TENSORBOARD_DIR"]

HISTORY_CSV = "history.csv"
TENSORBOARD_DIR = "tensorboard"
COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_oa", "val_macc", "seconds", "samples_per_s"]


class EpochHistory:
    """``log(epoch, row)`` appends a CSV row and writes the row's numbers as TensorBoard scalars.

    Resuming after ``done_epochs`` epochs keeps the first ``done_epochs`` CSV rows and purges
    TensorBoard events past that epoch, so a killed run never shows an epoch twice."""

    def __init__(self, run_dir: str | Path, done_epochs: int = 0, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        run_dir = Path(run_dir)
        self.csv_path = run_dir / HISTORY_CSV
        kept: list[dict] = []
        if self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                kept = [r for r in csv.DictReader(f)
                        if str(r.get("epoch") or "").isdigit() and int(r["epoch"]) <= done_epochs]
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(self.csv_path, table.getvalue())  # a crash here leaves the old table whole
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=done_epochs + 1 if done_epochs else None)

    def log(self, epoch: int, row: dict) -> None:
        """``epoch`` is 1-based; ``row`` maps COLUMNS names to numbers (None: not measured)."""
        if not self.enabled:
            return
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise KeyError(f"unknown history columns {sorted(unknown)}; known: {COLUMNS}")
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow({"epoch": epoch, **{k: v for k, v in row.items()
                                                                                if v is not None}})
        for key, value in row.items():
            if value is not None and key != "epoch":
                section = "val" if key.startswith("val_") else "train" if key.startswith("train_") else "run"
                self.writer.add_scalar(f"{section}/{key}", value, epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
