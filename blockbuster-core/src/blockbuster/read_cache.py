"""A read cache for remote zarr stores: the chunks a tile's halo shares with its neighbours
are fetched once, not once per tile (see :mod:`blockbuster.stores`)."""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from typing import Any

from zarr.storage import WrapperStore


def read_cache_bytes() -> int:
    """Bytes of whole objects each remote reader keeps (``$BLOCKBUSTER_READ_CACHE_MB``, default
    128; 0 switches the cache off)."""
    return int(float(os.environ.get("BLOCKBUSTER_READ_CACHE_MB", "128")) * 2**20)


class ReadCache(WrapperStore):
    """A read-only zarr store that keeps the last objects it fetched (least recently used out
    first, up to :func:`read_cache_bytes`), still compressed.

    A tile's halo reads the edge chunks of its neighbours, which the neighbouring tiles read
    again: on a remote store each is a GET (with an 8-pixel halo on 32² chunks, 5.4 GETs per
    chunk without this cache). Entries are whole objects, so a cached chunk is the bytes
    the store would return; the cache lives per process and is not pickled.
    """

    def __init__(self, store, *, max_bytes: int | None = None):
        super().__init__(store)
        self.max_bytes = read_cache_bytes() if max_bytes is None else max_bytes
        self._cached: OrderedDict[str, Any] = OrderedDict()
        self._fetching: dict[str, asyncio.Future] = {}
        self._size = 0

    def _with_store(self, store):
        return type(self)(store, max_bytes=self.max_bytes)

    async def get(self, key, prototype, byte_range=None):
        if byte_range is not None or not self.max_bytes:
            return await self._store.get(key, prototype, byte_range)
        if key in self._cached:  # zarr's one event loop runs these: no lock needed
            self._cached.move_to_end(key)
            return self._cached[key]
        if key in self._fetching:  # another tile asked first: share its GET
            return await asyncio.shield(self._fetching[key])
        fetch = asyncio.ensure_future(self._store.get(key, prototype))
        self._fetching[key] = fetch
        try:
            value = await fetch
        finally:
            del self._fetching[key]
        if value is not None and len(value) <= self.max_bytes:
            self._cached[key] = value
            self._size += len(value)
            while self._size > self.max_bytes:
                self._size -= len(self._cached.popitem(last=False)[1])
        return value

    def __getstate__(self):
        return {"_store": self._store, "max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(state["_store"], max_bytes=state["max_bytes"])
