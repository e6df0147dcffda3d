"""Progress of a run as events: the stage it is in and the tile steps done across all stages.

:func:`~blockbuster.tile_process` sends every event to its listeners: the CLI's progress bar
(``progress=True``, tqdm) is one, a GUI (the napari plugin) another (``progress=callable``).
A listener may stop the run by raising :class:`~blockbuster.errors.RunCancelledError`:
the finished tiles stay staged, so running the same call again resumes from them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

STAGES = ("segment", "merge", "relabel")


@dataclass(frozen=True)
class ProgressEvent:
    """Where a run stands: its ``stage`` and ``done`` of ``total`` tile steps (every stage
    counts one step per tile, so ``total`` is tiles × stages)."""

    stage: str
    done: int
    total: int


Listener = Callable[[ProgressEvent], None]


class Progress:
    """Counts tile steps across the segment, merge and relabel stages and tells the listeners."""

    def __init__(self, enabled: bool | Listener, n_tiles: int, stages: Sequence[str] = STAGES):
        self.total = n_tiles * len(stages)
        self.done = 0
        self.current = stages[0]
        self.bar = None
        self.listeners: list[Listener] = []
        if callable(enabled):
            self.listeners.append(enabled)
        elif enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, unit="tile", desc="blockbuster")
            self.listeners.append(self._show)

    def _show(self, event: ProgressEvent) -> None:
        self.bar.set_description(f"blockbuster: {event.stage}")
        self.bar.update(event.done - self.bar.n)

    def stage(self, name: str) -> None:
        self.current = name
        self._tell()

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        self._tell()

    def _tell(self) -> None:
        event = ProgressEvent(self.current, self.done, self.total)
        for listener in self.listeners:
            listener(event)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
