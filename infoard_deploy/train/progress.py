"""Rich progress for training: a transient per-epoch bar with the running loss / accuracy, then one
summary line per epoch. Everything goes to stderr, so ``--json`` output on stdout stays clean."""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_console = Console(stderr=True, highlight=False)


class _Bar:
    def __init__(self, progress: Progress | None, task) -> None:
        self.progress, self.task = progress, task

    def advance(self, text: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, stats=text)


class EpochProgress:
    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or _console

    @contextlib.contextmanager
    def epoch(self, epoch: int, epochs: int, steps: int) -> Iterator[_Bar]:
        if not self.enabled or not self.console.is_terminal:  # logs and pipes get the summary lines only
            yield _Bar(None, None)
            return
        progress = Progress(TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
                            console=self.console, transient=True)
        with progress:
            task = progress.add_task("train", total=steps, stats="")
            yield _Bar(progress, task)

    def summary(self, row: Dict[str, Any]) -> None:
        if not self.enabled:
            return

        def pct(v):
            return "-" if v is None else f"{100 * v:.2f}%"

        self.console.print(
            f"epoch {row['epoch']}: lr {row['lr']:.4g} loss {row['loss']:.4f} "
            f"train {pct(row.get('train_acc'))} / adv {pct(row.get('train_adv_acc'))}  "
            f"val clean {pct(row.get('val_clean'))} robust {pct(row.get('val_robust'))}  "
            f"{row['epoch_time_s']:.1f}s ({row['images_per_s']:.0f} img/s)",
            markup=False, soft_wrap=True)
