"""Remote stores in and out, against real servers: moto's S3 server and a local HTTP server.

Every run here goes over HTTP to a server in this process (``blockbuster.testing.serve_s3``,
``serve_files``); nothing is mocked below fsspec. The GET-per-input-chunk figure of a run is
printed (``-s`` shows it) and is also measured by ``bench/remote_gets.py``.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from blockbuster import tile_process
from blockbuster.cli import main
from blockbuster.errors import (
    OutputLockedError,
    ReadOnlyStoreError,
    StoreAccessError,
    StoreNotInstalledError,
)
from blockbuster.lock import lock_output
from blockbuster.stores import Location
from blockbuster.synthetic import write_image
from blockbuster.table import read_table
from blockbuster.testing import serve_files, serve_s3, store_digest

pytest.importorskip("moto.server", reason="remote-store tests need moto[server]")
pytest.importorskip("s3fs", reason="remote-store tests need s3fs")

RELIABILITY = Path(__file__).with_name("test_reliability.py")
THRESHOLD = {"threshold": 0.5, "sigma": 1.0}


def reliability_helpers():
    """The local SIGKILL tests' ``CHILD`` (a run that SIGKILLs itself part-way), reused as is."""
    spec = importlib.util.spec_from_file_location("reliability_helpers", RELIABILITY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def s3():
    with serve_s3() as server:
        server.make_bucket("images")
        yield server


@pytest.fixture
def bucket(s3, request):
    """A fresh bucket per test (named after it), so tests never see each other's objects."""
    name = request.node.name.lower().replace("_", "-").replace("[", "-").strip("]")[:50]
    s3.make_bucket(name)
    return f"s3://{name}"


def ome_zarr_image(folder: Path) -> tuple[Path, np.ndarray]:
    from scipy import ndimage

    rng = np.random.default_rng(3)
    data = ndimage.gaussian_filter(rng.random((96, 80)), 2).astype(np.float32) * 4 - 1.5
    path = write_image(folder / "image.zarr", data, axes="yx", scale=(0.5, 0.5),
                       units={"y": "micrometer", "x": "micrometer"}, levels=2, chunks=(32, 32))
    return path, data


def upload(s3, local: Path, url: str) -> None:
    Location(url, s3.storage_options).fs.put(str(local), url, recursive=True)


def download(s3, url: str, local: Path) -> Path:
    Location(url, s3.storage_options).fs.get(url, str(local), recursive=True)
    return local


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path; the job fingerprint (it names the input's
    location) is taken out of the metadata."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name in ("zarr.json", ".zattrs"):
            meta = json.loads(data)
            meta.get("attributes", meta).get("blockbuster", {}).pop("fingerprint", None)
            data = json.dumps(meta, sort_keys=True).encode()
        files[path.relative_to(folder).as_posix()] = data
    return files


def test_ome_zarr_in_s3_labels_out_to_s3_equal_a_local_run(tmp_path, s3, bucket):
    local, _ = ome_zarr_image(tmp_path / "local")
    upload(s3, local, f"{bucket}/image.zarr")
    options = dict(tile_shape=(32, 32), overlap=8, writer="ome-zarr",
                   writer_options={"name": "cells"}, segmenter_options=THRESHOLD)
    expected = tile_process(local, "threshold", write_to=local, compute=True, **options)

    s3.requests.clear()
    labels = tile_process(f"{bucket}/image.zarr", "threshold", write_to=f"{bucket}/image.zarr",
                          storage_options=s3.storage_options, stage_dir=tmp_path / "stage",
                          compute=True, **options)
    name = bucket.removeprefix("s3://")
    chunk_gets = s3.count("GET", f"/{name}/image.zarr/0/c/")
    print(f"\nGET requests per input chunk (S3, 32x32 tiles, overlap 8, 3x3 chunks): "
          f"{chunk_gets / 9:.2f} ({chunk_gets} GETs of 9 chunks)")
    assert np.array_equal(labels, expected) and labels.max() > 3
    assert chunk_gets == 9  # each chunk fetched once, though halos read it for up to 4 tiles
    assert s3.count("HEAD", f"/{name}/image.zarr/0/c/") == 0
    written = download(s3, f"{bucket}/image.zarr/labels", tmp_path / "from-s3")
    assert tree(written) == tree(local / "labels")  # chunks, pyramid, metadata: byte for byte
    assert not any((tmp_path / "stage").iterdir())  # the local stage is gone after success


def test_cli_run_reads_and_writes_s3_from_the_config(tmp_path, s3, bucket, monkeypatch,
                                                      capsys):
    local, data = ome_zarr_image(tmp_path)
    upload(s3, local, f"{bucket}/image.zarr")
    options = "{ " + ", ".join(f'{k} = "{v}"' for k, v in s3.storage_options.items()) + " }"
    config = tmp_path / "job.toml"
    config.write_text(f"""
[input]
path = "{bucket}/image.zarr"
storage_options = {options}
[segmenter]
name = "threshold"
threshold = 0.5
[tiling]
tile_shape = [32, 32]
overlap = 8
[output]
path = "{bucket}/labels.zarr"
table = true
storage_options = {options}
[run]
stage_dir = "stage"
""")
    assert main(["run", str(config)]) == 0
    options = dict(segmenter_options={"threshold": 0.5}, tile_shape=(32, 32), overlap=8)
    expected = tile_process(data, "threshold", compute=True, **options)  # the numpy pipeline
    store = Location(f"{bucket}/labels.zarr", s3.storage_options).zarr_store(read_only=True)
    assert np.array_equal(zarr.open_array(store=store, mode="r")[:], expected)
    tile_process(local, "threshold", table=tmp_path / "objects.csv", **options)
    table = read_table(f"{bucket}/labels.zarr.objects.csv", storage_options=s3.storage_options)
    assert table.equals(read_table(tmp_path / "objects.csv"))  # physical columns included
    for name, value in [("AWS_ENDPOINT_URL", s3.url), ("AWS_ACCESS_KEY_ID", "testing"),
                        ("AWS_SECRET_ACCESS_KEY", "testing")]:
        monkeypatch.setenv(name, value)  # `blockbuster info` takes credentials from the env
    capsys.readouterr()
    assert main(["info", f"{bucket}/image.zarr"]) == 0
    assert "shape:  (96, 80)" in capsys.readouterr().out


@pytest.mark.slow
def test_sigkill_writing_to_s3_then_resume_is_byte_identical(tmp_path, s3, bucket):
    """The local SIGKILL test's child, pointed at S3 through the environment (credentials and
    endpoint as a cluster job would get them), killed mid-segment and rerun."""
    helpers = reliability_helpers()
    script = tmp_path / "child.py"
    script.write_text(helpers.CHILD)
    reference = tmp_path / "reference.zarr"
    subprocess.run([sys.executable, str(script), "none", "0", str(reference)], check=True)
    env = {**os.environ, "AWS_ENDPOINT_URL": s3.url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "BLOCKBUSTER_STAGE_DIR": str(tmp_path / "stage")}
    out = f"{bucket}/labels.zarr"
    crashed = subprocess.run([sys.executable, str(script), "segment", "5", out], env=env)
    assert crashed.returncode == -signal.SIGKILL
    (stage,) = (tmp_path / "stage").iterdir()  # staged locally, named by the job
    assert 1 <= len(list((stage / "tiles").glob("*.pickle"))) < 16
    resumed = subprocess.run([sys.executable, str(script), "none", "0", out], env=env)
    assert resumed.returncode == 0
    written = download(s3, out, tmp_path / "from-s3.zarr")
    assert store_digest(written) == store_digest(reference)
    assert (written / "zarr.json").read_bytes() == (reference / "zarr.json").read_bytes()
    assert not stage.exists()


def test_read_only_https_style_server(tmp_path):
    local, data = ome_zarr_image(tmp_path)
    files = {f"image.zarr/{p.relative_to(local).as_posix()}": p.read_bytes()
             for p in local.rglob("*") if p.is_file()}
    expected = tile_process(data, "threshold", segmenter_options=THRESHOLD, tile_shape=(32, 32),
                            overlap=8, compute=True)
    with serve_files(files) as server:
        url = f"{server.url}/image.zarr"
        labels = tile_process(url, "threshold", segmenter_options=THRESHOLD, tile_shape=(32, 32),
                              overlap=8, compute=True)
        chunk_gets = sum(1 for r in server.requests if r.startswith("image.zarr/0/c/"))
        print(f"\nGET requests per input chunk (HTTP): {chunk_gets / 9:.2f}")
        assert np.array_equal(labels, expected)
        assert chunk_gets == 9
        with pytest.raises(ReadOnlyStoreError, match="read-only store"):
            tile_process(url, "threshold", write_to=f"{server.url}/labels.zarr")
        with pytest.raises(ReadOnlyStoreError, match="read-only store"):
            tile_process(url, "threshold", writer="ome-zarr", write_to=url)


def test_unknown_scheme_and_missing_package_name_what_to_install():
    with pytest.raises(StoreNotInstalledError, match="no filesystem knows the scheme nosuch://"):
        tile_process("nosuch://bucket/image.zarr", "threshold")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(StoreNotInstalledError, match="pip install gcsfs"):
            tile_process("gs://bucket/image.zarr", "threshold")


def test_missing_bucket_and_refused_credentials_name_the_url(tmp_path, s3, bucket):
    image = np.zeros((32, 32), np.float32)
    with pytest.raises(StoreAccessError,
                       match=r"s3://no-such-bucket/labels.zarr(.lock)?: the bucket "
                                               r"'no-such-bucket' does not exist.*bucket name"):
        tile_process(image, "threshold", write_to="s3://no-such-bucket/labels.zarr",
                     storage_options=s3.storage_options, stage_dir=tmp_path)
    with pytest.raises(StoreAccessError, match="no-such-bucket"):
        tile_process(image, "threshold", writer="ome-zarr", write_to="s3://no-such-bucket/i.zarr",
                     storage_options=s3.storage_options, stage_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # refused before anything was staged
    s3.refuse_credentials = True
    try:
        with pytest.raises(StoreAccessError, match=rf"{bucket}/labels.zarr(.lock)?: .*credentials"):
            tile_process(image, "threshold", write_to=f"{bucket}/labels.zarr",
                         storage_options=s3.storage_options, stage_dir=tmp_path)
        with pytest.raises(StoreAccessError, match=rf"{bucket}/image.zarr.*credentials"):
            tile_process(f"{bucket}/image.zarr", "threshold", storage_options=s3.storage_options)
    finally:
        s3.refuse_credentials = False


def test_file_urls_are_local_paths(tmp_path):
    local, data = ome_zarr_image(tmp_path)
    labels = tile_process(f"file://{local}", "threshold", segmenter_options=THRESHOLD,
                          tile_shape=(32, 32), write_to=f"file://{tmp_path}/out.zarr",
                          compute=True)
    assert (tmp_path / "out.zarr" / "zarr.json").exists()
    assert (tmp_path / "out.zarr.stage").exists() is False
    expected = tile_process(data, "threshold", segmenter_options=THRESHOLD, tile_shape=(32, 32),
                            compute=True)
    assert np.array_equal(labels, expected)


def test_read_cache_keeps_the_most_recent_objects_within_its_budget():
    import asyncio

    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import MemoryStore

    from blockbuster.read_cache import ReadCache

    prototype = default_buffer_prototype()
    store = MemoryStore()
    fetched = []

    async def scenario():
        for key in "abc":
            await store.set(key, prototype.buffer.from_bytes(key.encode() * 10))
        original = store.get

        async def get(key, proto, byte_range=None):
            fetched.append(key)
            return await original(key, proto, byte_range)

        store.get = get
        cache = ReadCache(store, max_bytes=20)  # room for two 10-byte objects
        values = [await cache.get(k, prototype) for k in "abab"]
        await cache.get("c", prototype)   # evicts a (least recently used)
        await cache.get("b", prototype)   # still cached
        await cache.get("a", prototype)   # fetched again
        both = await asyncio.gather(cache.get("c", prototype), cache.get("c", prototype))
        return values, both

    values, both = asyncio.run(scenario())
    assert [v.to_bytes() for v in values] == [b"a" * 10, b"b" * 10] * 2
    assert fetched == ["a", "b", "c", "a", "c"]  # c was evicted by a; its 2 reads share 1 GET
    assert both[0].to_bytes() == b"c" * 10


def test_tiled_tiff_in_s3_is_read_in_place(tmp_path, s3, bucket):
    tifffile = pytest.importorskip("tifffile")
    _, data = ome_zarr_image(tmp_path)
    image = (data * 1000).astype(np.uint16)
    local = tmp_path / "image.ome.tif"
    tifffile.imwrite(local, image, tile=(32, 32), ome=True, metadata={"axes": "YX"})
    upload(s3, local, f"{bucket}/image.ome.tif")
    run = dict(segmenter_options={"threshold": 500}, tile_shape=(32, 32), overlap=8,
               compute=True)
    labels = tile_process(f"{bucket}/image.ome.tif", "threshold",
                          storage_options=s3.storage_options, executor="threads", **run)
    assert np.array_equal(labels, tile_process(local, "threshold", **run))
    assert labels.max() > 3


@pytest.mark.parametrize("where", ["local", "s3"])
def test_create_is_put_if_absent_for_lock_files(tmp_path, s3, bucket, where):
    url = str(tmp_path / "lock") if where == "local" else f"{bucket}/out.zarr/lock"
    lock = Location(url, s3.storage_options)
    assert lock.exclusive_create
    lock.create(b"first run")
    with pytest.raises(FileExistsError):
        lock.create(b"second run")
    assert lock.read_bytes() == b"first run"
    lock.write_bytes(b"first run, heartbeat")  # the holder refreshes it
    assert lock.read_bytes() == b"first run, heartbeat"


def test_an_s3_output_is_locked_for_the_run_and_a_gone_holder_is_taken_over(tmp_path, s3,
                                                                            bucket):
    _, data = ome_zarr_image(tmp_path)
    out = f"{bucket}/labels.zarr"
    lock = Location(f"{out}.lock", s3.storage_options)
    options = dict(tile_shape=(32, 32), overlap=8, segmenter_options=THRESHOLD,
                   storage_options=s3.storage_options, stage_dir=tmp_path / "stage")
    expected = tile_process(data, "threshold", compute=True, **options)

    holder = lock_output(out, s3.storage_options)
    holder.acquire()  # another run, elsewhere, is writing this output
    try:
        with pytest.raises(OutputLockedError, match=r"is held by process \d+ on host"):
            tile_process(data, "threshold", write_to=out, **options)
        assert not Location(out, s3.storage_options).exists()  # refused before writing
    finally:
        holder.release()
    assert not lock.exists()

    gone = {"host": "node-that-died", "pid": 4242, "started": 0.0, "heartbeat": 0.0,
            "token": "gone"}
    lock.write_bytes(json.dumps(gone).encode())  # a run on a lost node left its lock
    with pytest.warns(UserWarning, match="took over the lock .*heartbeat was"):
        labels = tile_process(data, "threshold", write_to=out, compute=True, **options)
    assert np.array_equal(labels, expected)
    assert not lock.exists()  # released at the end of the run


def test_worker_processes_fetch_each_chunk_from_s3_about_once(tmp_path, s3, bucket):
    """Two worker processes hand on the chunks both their tiles read (decoded, through the
    local stage) instead of each fetching them: about one GET per chunk, the labels of a
    local run, and nothing left in the stage."""
    local, _ = ome_zarr_image(tmp_path / "local")
    upload(s3, local, f"{bucket}/image.zarr")
    options = dict(tile_shape=(32, 32), overlap=8, segmenter_options=THRESHOLD, compute=True)
    expected = tile_process(local, "threshold", **options)
    s3.requests.clear()
    labels = tile_process(f"{bucket}/image.zarr", "threshold", executor="processes", workers=2,
                          storage_options=s3.storage_options, write_to=tmp_path / "out.zarr",
                          **options)
    name = bucket.removeprefix("s3://")
    chunk_gets = s3.count("GET", f"/{name}/image.zarr/0/c/")
    assert chunk_gets <= 1.2 * 9, f"{chunk_gets} GETs of 9 chunks"
    assert np.array_equal(labels, expected)
    assert not (tmp_path / "out.zarr.stage").exists()


def test_relate_polygons_and_expand_on_s3_equal_local(tmp_path, s3, bucket):
    """The measuring steps read their labels (and the table) from S3 and write back there,
    with the same results as on local files."""
    pytest.importorskip("geopandas")
    from skimage.segmentation import expand_labels as expand_whole

    from blockbuster import expand_labels
    from blockbuster.polygons import polygons, write_polygons
    from blockbuster.relations import relate

    local, _ = ome_zarr_image(tmp_path / "local")
    nuclei = tile_process(local, "threshold", segmenter_options=THRESHOLD, tile_shape=(32, 32),
                          write_to=tmp_path / "nuclei.zarr", table=tmp_path / "nuclei.csv",
                          compute=True)
    expand_labels(tmp_path / "nuclei.zarr", 3, write_to=tmp_path / "cells.zarr")
    for name in ("nuclei.zarr", "cells.zarr", "nuclei.csv"):
        upload(s3, tmp_path / name, f"{bucket}/{name}")
    remote = {"storage_options": s3.storage_options}

    links = relate(f"{bucket}/nuclei.zarr", f"{bucket}/cells.zarr", tile_shape=(40, 30),
                   table=f"{bucket}/links.parquet", **remote)
    expected = relate(tmp_path / "nuclei.zarr", tmp_path / "cells.zarr")
    assert links.equals(expected) and len(links) == nuclei.max() > 3
    assert read_table(f"{bucket}/links.parquet", **remote).equals(expected)

    shapes = polygons(f"{bucket}/nuclei.zarr", table=f"{bucket}/nuclei.csv", **remote)
    local_shapes = polygons(tmp_path / "nuclei.zarr", table=tmp_path / "nuclei.csv")
    assert shapes.equals(local_shapes) and shapes.attrs == local_shapes.attrs
    assert shapes.attrs["scale"] == [0.5, 0.5]  # recorded with the labels, read from S3
    write_polygons(shapes, f"{bucket}/nuclei.geojson", **remote)
    write_polygons(local_shapes, tmp_path / "nuclei.geojson")
    assert Location(f"{bucket}/nuclei.geojson", s3.storage_options).read_bytes() == \
        (tmp_path / "nuclei.geojson").read_bytes()

    grown = expand_labels(f"{bucket}/nuclei.zarr", 2.0, spacing="physical",
                          write_to=f"{bucket}/cells-2um.zarr", stage_dir=tmp_path / "stage",
                          compute=True, **remote)  # 2 um: 4 pixels
    np.testing.assert_array_equal(grown, expand_whole(nuclei, 2.0, spacing=(0.5, 0.5)))
    assert not any((tmp_path / "stage").iterdir())
