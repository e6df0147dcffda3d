"""The compiled part of blockbuster-core: the per-run loops of the intensity columns.

Everything else is declared in pyproject.toml. The extension uses only the Python C API
(the buffer protocol), so building it needs a C compiler and the Python headers, nothing more.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("blockbuster._runkernels", ["src/blockbuster/_runkernels.c"])])
