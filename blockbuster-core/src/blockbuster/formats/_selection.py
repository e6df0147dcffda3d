"""What the format readers share: reading a region, with one channel picked out of a c axis."""

from __future__ import annotations

import numpy as np


class ChannelSelectingReader:
    """Base of readers whose ``channel=`` option drops the ``c`` axis.

    Subclasses set ``shape``, ``channel_index`` (or ``None``) and ``_channel_axis`` (the c axis
    position in the stored array) and implement ``_source()`` returning the stored array.
    """

    shape: tuple[int, ...]
    channel_index: int | None = None
    _channel_axis: int | None = None

    def _source(self):
        raise NotImplementedError

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        region = tuple(region) + (slice(None),) * (len(self.shape) - len(region))
        if self.channel_index is not None:
            region = (region[: self._channel_axis] + (self.channel_index,)
                      + region[self._channel_axis:])
        return np.asarray(self._source()[region])

    def __getitem__(self, region) -> np.ndarray:
        return self.read(region if isinstance(region, tuple) else (region,))
