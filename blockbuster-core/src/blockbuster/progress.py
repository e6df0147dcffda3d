"""One progress bar for a whole run, its stage named in the description (off by default)."""

from __future__ import annotations


class Progress:
    """Counts tile steps across the segment, merge and relabel stages."""

    def __init__(self, enabled: bool, n_tiles: int, stages=("segment", "merge", "relabel")):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=n_tiles * len(stages), unit="tile", desc="blockbuster")

    def stage(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_description(f"blockbuster: {name}")

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
