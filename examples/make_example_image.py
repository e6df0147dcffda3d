"""Write a synthetic 4096 x 4096 nuclei image as a chunked zarr (the README's example input)."""

import sys

import zarr

from blockbuster.synthetic import nuclei

path = sys.argv[1] if len(sys.argv) > 1 else "examples/data/nuclei.zarr"
image = nuclei((4096, 4096), density=0.002, seed=0)
zarr.create_array(store=path, data=image, chunks=(512, 512), overwrite=True)
print(f"wrote {image.shape} {image.dtype} nuclei image to {path}")
