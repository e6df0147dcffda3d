"""The built-in backends: each module holds its implementations next to the hook
implementations that register them, exactly as an external plugin package would.

- :mod:`~blockbuster.builtin.arrays` -- readers ``zarr`` and ``array`` (numpy, dask, zarr);
- :mod:`~blockbuster.builtin.zarr_writer` -- writer ``zarr`` and the base of both zarr writers;
- :mod:`~blockbuster.builtin.ome_zarr` -- reader and writer ``ome-zarr``;
- :mod:`~blockbuster.builtin.tiff` -- reader ``tiff`` (TIFF, OME-TIFF, BigTIFF);
- :mod:`~blockbuster.builtin.segmenters` -- segmenters ``threshold`` and ``watershed``;
- :mod:`~blockbuster.builtin.executors` -- executors ``threads``, ``processes``, ``serial``
  (and ``dask``, :mod:`~blockbuster.builtin.dask`, when ``distributed`` is installed).
"""

PLUGINS = (
    "blockbuster.builtin.arrays",
    "blockbuster.builtin.zarr_writer",
    "blockbuster.builtin.ome_zarr",
    "blockbuster.builtin.tiff",
    "blockbuster.builtin.segmenters",
    "blockbuster.builtin.executors",
)
