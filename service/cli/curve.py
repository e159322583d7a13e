"""The live loss curve of `kiln finetune create --watch`: train loss as the job reports it (one
point per poll of the job) and validation loss per epoch, drawn in the terminal with rich beside
the progress bar. Where stderr is not a terminal, the progress line as before and the curve once
at the end."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

TRAIN, VALID = "·", "◆"


class LossCurve:
    def __init__(self, width: int = 60, height: int = 10) -> None:
        self.width, self.height = width, height
        self.train: dict[int, float] = {}  # step -> train loss
        self.valid: dict[int, float] = {}  # epoch -> validation loss
        self.epoch_steps: dict[int, int] = {}  # epoch -> its last step
        self.total = 0

    def add(self, job: dict[str, Any]) -> None:
        p = job.get("progress") or {}
        step, epoch = int(p.get("step") or 0), int(p.get("epoch") or 0)
        self.total = int(p.get("total_steps") or self.total)
        if step and isinstance(p.get("train_loss"), int | float):
            self.train[step] = float(p["train_loss"])
        if epoch and isinstance(p.get("valid_loss"), int | float) and epoch not in self.valid:
            self.valid[epoch], self.epoch_steps[epoch] = float(p["valid_loss"]), step

    def lines(self) -> list[str]:
        """The chart as text rows (top: the highest loss), with the loss on the left axis."""
        values = [*self.train.values(), *self.valid.values()]
        if not values:
            return ["(no loss reported yet)"]
        lo, hi = min(values), max(values)
        span = (hi - lo) or 1.0
        last = max(self.total, *self.train, *self.epoch_steps.values(), 1)
        grid = [[" "] * self.width for _ in range(self.height)]

        def put(step: int, loss: float, mark: str) -> None:
            col = min(self.width - 1, (step - 1) * self.width // last)
            row = min(self.height - 1, int((hi - loss) / span * (self.height - 1) + 0.5))
            if grid[row][col] != VALID:
                grid[row][col] = mark

        for step, loss in self.train.items():
            put(step, loss, TRAIN)
        for epoch, loss in self.valid.items():
            put(self.epoch_steps[epoch], loss, VALID)
        out = []
        for r, cells in enumerate(grid):
            axis = f"{hi:9.4g} ┤" if r == 0 else f"{lo:9.4g} ┤" if r == self.height - 1 else " " * 9 + " │"
            out.append(axis + "".join(cells))
        out.append(" " * 10 + "└" + "─" * self.width + f" step (of {last})")
        out.append(" " * 11 + f"{TRAIN} train loss   {VALID} validation loss per epoch")
        return out

    def panel(self, status_line: str) -> Group:
        return Group(Text(status_line.strip()), Panel(Text("\n".join(self.lines())), title="loss"))


def watch(
    wait: Callable[..., dict[str, Any]], job_id: str, progress_line: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """Follow a job to its end (`wait` is KilnClient.wait_job), drawing the curve as it goes."""
    curve = LossCurve()
    console = Console(stderr=True)
    if not console.is_terminal:

        def plain(job: dict[str, Any]) -> None:
            curve.add(job)
            print(progress_line(job), end="", file=sys.stderr)

        job = wait(job_id, on_update=plain)
        print(file=sys.stderr)
        console.print("\n".join(curve.lines()), markup=False, highlight=False)
        return job
    with Live(console=console, refresh_per_second=4, transient=False) as live:

        def draw(job: dict[str, Any]) -> None:
            curve.add(job)
            live.update(curve.panel(progress_line(job)))

        return wait(job_id, on_update=draw)
