"""Progress bars (rich). Silent on non-main DDP ranks and when disabled."""

from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class _Bar:
    def __init__(self, progress: Progress, task_id):
        self.progress, self.id = progress, task_id

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.id, n)

    def update(self, description: Optional[str] = None) -> None:
        if description:
            self.progress.update(self.id, description=description)

    def done(self) -> None:
        # A finished bar stays as a one-line record of the run (description holds the metric).
        self.progress.update(self.id, completed=self.progress.tasks[self.id].total)


class Reporter:
    """Owns one rich Progress; `task(...)` opens a bar for one training run."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress: Optional[Progress] = None

    def __enter__(self):
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def task(self, description: str, total: int):
        if self._progress is None:
            return None
        return _Bar(self._progress, self._progress.add_task(description, total=total))

    def log(self, message: str) -> None:
        if self.enabled:
            console.print(message)
