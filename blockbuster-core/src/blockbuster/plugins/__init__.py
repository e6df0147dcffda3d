"""Namespace for backend packages.

``blockbuster-cellpose`` ships ``blockbuster.plugins.cellpose``.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
