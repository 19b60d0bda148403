"""What a training run leaves behind as it goes: a CSV log, a PNG of the curves, a progress bar."""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["TrainLog"]

COLUMNS = ("step", "phase", "lr", "loss", "loss_d", "loss_adv", "val_dice_liver", "val_dice_lesion", "seconds")


class TrainLog:
    """Appends rows to ``log.csv`` and redraws ``curves.png`` (train loss; validation Dice per class).

    Args:
        out_dir: the run's folder.
        total_steps: steps of the whole run (for the bar's ETA).
        bar: draw a tqdm bar on stderr (only when it is a terminal; log lines are printed either way).
        resume: keep an existing ``log.csv`` (a resumed run continues it).
    """

    def __init__(self, out_dir: Path, total_steps: int, bar: bool = True, resume: bool = False) -> None:
        self.path = Path(out_dir) / "log.csv"
        self.png = Path(out_dir) / "curves.png"
        self.start = time.perf_counter()
        self.rows: list[dict] = []
        if resume and self.path.is_file():
            with open(self.path, newline="") as f:
                self.rows = list(csv.DictReader(f))
        else:
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(COLUMNS)
        self.bar = None
        if bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, file=sys.stderr, disable=None, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}")

    def step(self, step: int, phase: str, lr: float, losses: dict[str, float]) -> None:
        """Record one optimisation step (rows are written every step; the file is the run's history)."""
        row = {"step": step, "phase": phase, "lr": f"{lr:.3g}", "seconds": round(time.perf_counter() - self.start, 1),
               **{k: f"{v:.5f}" for k, v in losses.items() if k in COLUMNS}}
        self._append(row)
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix_str(f"{phase} loss {losses.get('loss', float('nan')):.4f}", refresh=True)

    def validation(self, step: int, phase: str, scores: dict[str, float]) -> None:
        row = {"step": step, "phase": phase, "seconds": round(time.perf_counter() - self.start, 1),
               **{f"val_{k}": f"{v:.4f}" for k, v in scores.items()}}
        self._append(row)
        self.message(f"step {step} ({phase}) validation " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        self.plot()

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        self.plot()
        if self.bar is not None:
            self.bar.close()

    def _append(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, COLUMNS).writerow(row)

    def plot(self) -> None:
        """Redraw the curves (atomically: a viewer never sees half a PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def series(key):
            pts = [(int(r["step"]), float(r[key])) for r in self.rows if r.get(key) not in (None, "")]
            return [p for p in pts if math.isfinite(p[1])]

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
        for key, label in (("loss", "train loss"), ("loss_d", "discriminator loss"), ("loss_adv", "adversarial")):
            pts = series(key)
            if pts:
                steps, values = (np.asarray(v, float) for v in zip(*pts, strict=True))
                line = ax1.plot(steps, values, lw=0.5, alpha=0.35)[0]
                k = max(1, len(values) // 50)  # running mean over ~2 % of the run: the trend through the noise
                smooth = np.convolve(values, np.ones(k) / k, mode="valid")
                ax1.plot(steps[k - 1:], smooth, color=line.get_color(), lw=1.2, label=label)
        ax1.set_xlabel("step")
        ax1.set_yscale("log")
        if ax1.lines:
            ax1.legend(fontsize=8)
        for key, label in (("val_dice_liver", "liver"), ("val_dice_lesion", "lesion")):
            pts = series(key)
            if pts:
                ax2.plot(*zip(*pts, strict=True), marker="o", label=label)
        ax2.set_xlabel("step")
        ax2.set_ylabel("validation Dice")
        ax2.set_ylim(0, 1)
        if ax2.lines:
            ax2.legend(fontsize=8)
        fig.tight_layout()
        tmp = self.png.with_suffix(f".tmp{os.getpid()}.png")
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        os.replace(tmp, self.png)
