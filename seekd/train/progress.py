"""A Trainer callback that shows progress (rich) and keeps the loss: loss_log.csv as it goes, and a
loss plot (loss.png, matplotlib) at the end."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

RECENT_STEPS = 5  # the train loss reported is the mean over this many last steps (one step is noisy)


class LossRecorder(TrainerCallback):
    def __init__(self, csv_path: Path, show_progress: bool, resume_step: int = 0) -> None:
        """`resume_step`: a resumed run keeps the rows logged up to its checkpoint."""
        self.csv_path = csv_path
        self.rows: list[tuple[int, float | None, float | None]] = []  # (step, train loss, eval loss)
        if resume_step and csv_path.is_file():
            with open(csv_path, newline="") as f:
                for row in csv.DictReader(f):
                    if int(row["step"]) <= resume_step:
                        self.rows.append((int(row["step"]), _number(row["train_loss"]), _number(row["eval_loss"])))
        self.show_progress = show_progress
        self._progress: Progress | None = None
        self._task = None

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        if self.show_progress:
            self._progress = Progress(
                TextColumn("fine-tuning"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._progress.start()
            self._task = self._progress.add_task("", total=state.max_steps, completed=state.global_step, loss="-")

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        logs = logs or {}
        if "loss" in logs:
            self.rows.append((state.global_step, float(logs["loss"]), None))
            if self._progress is not None:
                self._progress.update(self._task, completed=state.global_step, loss=f"{logs['loss']:.4f}")
            else:
                logger.info("step %d/%d loss %.4f", state.global_step, state.max_steps, logs["loss"])
        if "eval_loss" in logs:
            self.add_eval(state.global_step, float(logs["eval_loss"]))
        self._write()

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def add_eval(self, step: int, eval_loss: float | None) -> None:
        if eval_loss is not None and (step, None, eval_loss) not in self.rows:
            self.rows.append((step, None, eval_loss))
            self._write()

    def recent_train_loss(self) -> float:
        losses = [loss for _, loss, _ in self.rows if loss is not None][-RECENT_STEPS:]
        return sum(losses) / len(losses) if losses else float("nan")

    def _write(self) -> None:
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "train_loss", "eval_loss"])
            writer.writerows(["" if v is None else v for v in row] for row in self.rows)

    def plot(self) -> Path | None:
        """loss.png beside the CSV; None where matplotlib is not installed."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            logger.info("matplotlib is not installed: the loss is in %s only", self.csv_path)
            return None
        train = [(s, v) for s, v, _ in self.rows if v is not None]
        evals = [(s, v) for s, _, v in self.rows if v is not None]
        fig, ax = plt.subplots(figsize=(6, 4))
        if train:
            ax.plot(*zip(*train), label="train")
        if evals:
            ax.plot(*zip(*evals), "o-", label="eval")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        path = self.csv_path.with_name("loss.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _number(text: str) -> float | None:
    return float(text) if text else None
