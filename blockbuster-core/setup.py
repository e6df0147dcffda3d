"""The compiled part of blockbuster-core: the per-run loops of the intensity columns
(``_runkernels``) and the per-pixel loops of a tile's labels (``_labelkernels``).

Everything else is declared in pyproject.toml. The extensions use only the Python C API
(the buffer protocol), so building them needs a C compiler and the Python headers, nothing more.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension(f"blockbuster.{name}", [f"src/blockbuster/{name}.c"],
              depends=["src/blockbuster/_buffer_kinds.h", "src/blockbuster/_kernel_module.h"])
    for name in ("_runkernels", "_labelkernels")
])
