"""What the format readers share: reading a region, with one channel picked out of a c axis."""

from __future__ import annotations

import numpy as np

from blockbuster.errors import InvalidParameterError
from blockbuster.readers import BaseReader


class ChannelSelectingReader(BaseReader):
    """Base of readers whose ``channel=`` option drops the ``c`` axis.

    Subclasses set ``shape``, ``channel_index`` (or ``None``) and ``_channel_axis`` (the c axis
    position in the stored array) and implement ``_source()`` returning the stored array.
    """

    shape: tuple[int, ...]
    channel_index: int | None = None
    _channel_axis: int | None = None

    def _source(self):
        raise NotImplementedError

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        """``region`` of the stored array: from its chunk files where it is a local zarr array
        (:mod:`blockbuster.builtin.zarr_chunks`), else through its own indexing."""
        stored = self._stored(region)
        files = self._chunk_files()
        block = files.read(stored) if files is not None else None
        return block if block is not None else np.asarray(self._source()[stored])

    def _chunk_files(self):
        if "_files" not in self.__dict__:  # once per process: the source opens lazily too
            from blockbuster.builtin.zarr_chunks import ChunkFiles

            self._files = ChunkFiles.of(self._source())
        return self._files

    def unreadable_chunks(self, region: tuple[slice, ...]) -> list[str]:
        """The stored chunks under ``region`` that fail to read (zarr-backed sources)."""
        from blockbuster.builtin.arrays import unreadable_zarr_chunks

        where = getattr(self, "array_path", None) or self.source
        return unreadable_zarr_chunks(self._source(), self._stored(region), where)

    def _stored(self, region: tuple) -> tuple:
        """``region`` of this reader's axes as a region of the stored array."""
        region = tuple(region) + (slice(None),) * (len(self.shape) - len(region))
        if self.channel_index is None:
            return region
        return region[: self._channel_axis] + (self.channel_index,) + region[self._channel_axis:]


def channel_index(channel, labels: list[str], count: int, where: str) -> int:
    """Resolve ``channel=`` (an index, or a channel label/name) to an index in ``0..count-1``."""
    if isinstance(channel, str) and not channel.lstrip("-").isdigit():
        if channel not in labels:
            known = ", ".join(repr(c) for c in labels if c) or "none"
            raise InvalidParameterError(
                f"channel={channel!r} is not a channel label of {where}; labels: {known} "
                f"(or give an index 0..{count - 1})."
            )
        return labels.index(channel)
    index = int(channel)
    if not -count <= index < count:
        raise InvalidParameterError(
            f"channel={channel!r} is out of range; {where} has {count} channels."
        )
    return index % count
