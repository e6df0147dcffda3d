"""Microscope files through bioio for blockbuster: the ``bioio`` reader.

``tile_process("scan.czi", fn, reader="bioio", reader_options={"scene": 1, "channel": "DAPI"})``
or, in a config, ``[input] reader = "bioio"`` with ``scene``, ``channel``, ``level`` and ``t``.
A path no core reader owns (``.czi``, ``.nd2``, ``.lif``, ...) is picked automatically when an
installed bioio plugin reads it. See ``docs/bioio.md``.
"""

from blockbuster.plugins.bioio._formats import EXTRAS, extra_for, plugin_for
from blockbuster.plugins.bioio._reader import BioioReader

__all__ = ["EXTRAS", "BioioReader", "extra_for", "plugin_for"]
