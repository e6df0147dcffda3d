"""blockbuster: tiled processing of arbitrarily large images with globally consistent labels.

``blockbuster`` is shared by several distributions (``blockbuster-core`` and the backend
packages that add ``blockbuster.plugins.<name>``), so its ``__path__`` is extended across them.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

from blockbuster._version import __version__  # noqa: E402
from blockbuster.errors import BlockbusterError  # noqa: E402
from blockbuster.expand import expand_labels  # noqa: E402
from blockbuster.hookspecs import hookimpl  # noqa: E402
from blockbuster.pipeline import merge_tile_labels, tile_process  # noqa: E402
from blockbuster.segmenter import Needs  # noqa: E402
from blockbuster.worker import WorkerInfo, current_worker  # noqa: E402

__all__ = [
    "BlockbusterError",
    "Needs",
    "WorkerInfo",
    "__version__",
    "current_worker",
    "expand_labels",
    "hookimpl",
    "merge_tile_labels",
    "tile_process",
]
