"""The figure of docs/remote.md: requests per input chunk when the image is in S3 or on HTTP.

Writes a 1024² uint16 zarr of nuclei (128² chunks: 64 chunks) into moto's S3 server
(``blockbuster.testing.serve_s3``, a real HTTP S3 endpoint in this process) and onto a local
HTTP server (``serve_files``), segments it with 128² tiles and a 16-pixel halo (2 threads),
and counts from the servers' request logs the GETs and HEADs of the image's chunks. Rows: the
default (read cache on, s3fs ``max_concurrency=1``), the read cache off
(``BLOCKBUSTER_READ_CACHE_MB=0``), the decoded block cache off (``BLOCKBUSTER_BLOCK_CACHE_MB=0``,
see :mod:`blockbuster.read_cache`), both off, two worker processes, and s3fs's own
``max_concurrency=10``.

Usage: python bench/remote_gets.py [--out bench/results]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import zarr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from reporting import save  # noqa: E402

from blockbuster import tile_process  # noqa: E402
from blockbuster.stores import Location  # noqa: E402
from blockbuster.synthetic import nuclei  # noqa: E402
from blockbuster.testing import serve_files, serve_s3  # noqa: E402

SIDE, CHUNK, HALO = 1024, 128, 16
RUN = dict(segmenter_options={"threshold": 15000, "sigma": 1.0}, tile_shape=(CHUNK, CHUNK),
           overlap=HALO, executor="threads", workers=2, compute=True)
N_CHUNKS = (SIDE // CHUNK) ** 2


def s3_rows(image: np.ndarray, expected: np.ndarray) -> list[dict]:
    rows = []
    with serve_s3() as s3:
        s3.make_bucket("bench")
        store = Location("s3://bench/image.zarr", s3.storage_options).zarr_store()
        zarr.create_array(store=store, data=image, chunks=(CHUNK, CHUNK))
        for case, cache_mb, block_mb, extra, run in [
                ("S3, default", "128", "256", {}, {}),
                ("S3, read cache off", "0", "256", {}, {}),
                ("S3, block cache off", "128", "0", {}, {}),
                ("S3, both caches off", "0", "0", {}, {}),
                ("S3, default, 2 processes", "128", "256", {}, {"executor": "processes"}),
                ("S3, s3fs max_concurrency=10", "128", "256", {"max_concurrency": 10}, {})]:
            os.environ["BLOCKBUSTER_READ_CACHE_MB"] = cache_mb
            os.environ["BLOCKBUSTER_BLOCK_CACHE_MB"] = block_mb
            s3.requests.clear()
            started = time.perf_counter()
            labels = tile_process("s3://bench/image.zarr", "threshold",
                                  storage_options={**s3.storage_options, **extra},
                                  **{**RUN, **run})
            seconds = time.perf_counter() - started
            assert np.array_equal(labels, expected), "remote labels differ from local ones"
            rows.append(row(case, s3.count("GET", "/bench/image.zarr/c/"),
                            s3.count("HEAD", "/bench/image.zarr/c/"), len(s3.requests), seconds))
    os.environ.pop("BLOCKBUSTER_READ_CACHE_MB")
    os.environ.pop("BLOCKBUSTER_BLOCK_CACHE_MB")
    return rows


def http_row(folder: Path, image: np.ndarray, expected: np.ndarray) -> dict:
    zarr.create_array(store=str(folder / "image.zarr"), data=image, chunks=(CHUNK, CHUNK))
    files = {f"image.zarr/{p.relative_to(folder / 'image.zarr').as_posix()}": p.read_bytes()
             for p in (folder / "image.zarr").rglob("*") if p.is_file()}
    with serve_files(files) as server:
        started = time.perf_counter()
        labels = tile_process(f"{server.url}/image.zarr", "threshold", **RUN)
        seconds = time.perf_counter() - started
        assert np.array_equal(labels, expected), "remote labels differ from local ones"
        gets = sum(1 for r in server.requests if r.startswith("image.zarr/c/"))
        return row("HTTP, default", gets, 0, len(server.requests), seconds)


def row(case: str, gets: int, heads: int, total: int, seconds: float) -> dict:
    return {"case": case, "chunk_gets": gets, "chunk_heads": heads, "requests": total,
            "gets_per_chunk": gets / N_CHUNKS, "seconds": seconds}


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    image = nuclei((SIDE, SIDE), seed=1)
    expected = tile_process(image, "threshold", **RUN)
    rows = s3_rows(image, expected)
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(http_row(Path(tmp), image, expected))
    lines = [f"{SIDE}² uint16, {N_CHUNKS} chunks of {CHUNK}², tiles {CHUNK}² + {HALO}-pixel "
             "halo, 2 threads", "",
             "| case | GETs per input chunk | chunk GETs | chunk HEADs | all requests | seconds |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['gets_per_chunk']:.2f} | {r['chunk_gets']} | "
              f"{r['chunk_heads']} | {r['requests']} | {r['seconds']:.1f} |" for r in rows]
    save(args.out, "remote_gets", rows, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
