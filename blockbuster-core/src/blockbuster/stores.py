"""Where bytes live: a local path or a remote URL (``s3://``, ``gs://``, ``https://``...).

Every path blockbuster reads or writes goes through a :class:`Location`: a local path, or a
URL plus its ``storage_options`` (credentials, ``endpoint_url``, ``anon``...) handed to the
`fsspec <https://filesystem-spec.readthedocs.io>`_ filesystem of its scheme (s3fs, gcsfs,
fsspec's own HTTP filesystem). Zarr data goes through zarr's own ``FsspecStore``; nothing
here speaks HTTP itself. A ``file://`` URL is a local path.

One place, so one place to hook: the typed errors (scheme unknown or its package missing,
access denied, bucket missing, read-only scheme) are raised here, and an output lock can
take its lock file with :meth:`Location.create` (put-if-absent locally and on S3) and
refresh it with :meth:`Location.write_bytes`, whatever the store.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import shutil
from pathlib import Path
from typing import Any

from blockbuster.errors import ReadOnlyStoreError, StoreAccessError, StoreNotInstalledError

URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
READ_ONLY_SCHEMES = {"http", "https"}
#: fsspec implementation package per scheme, for the missing-package error
SCHEME_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs",
                   "http": "aiohttp", "https": "aiohttp", "az": "adlfs", "abfs": "adlfs"}
REMOTE_EXTRA = 'pip install "blockbuster-core[remote]"'


def is_url(where: Any) -> bool:
    """True for a string holding a URL with a scheme other than ``file://``."""
    if not isinstance(where, str):
        return False
    match = URL.match(where)
    return bool(match) and match.group(1).lower() != "file"


def write_atomically(path: Path, data: bytes) -> None:
    """Write the local file ``path`` whole or not at all (a failed write leaves no partial
    file behind)."""
    partial = path.with_suffix(path.suffix + ".partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def local_if_file_url(where: Any) -> Any:
    """A ``file://`` URL as a plain local path; anything else unchanged."""
    if isinstance(where, str) and where.lower().startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(where).path)
    return where


class Location:
    """A file or folder in a store: a local path, or a URL with its ``storage_options``.

    Parameters
    ----------
    where
        A local path (``str`` or ``os.PathLike``), a ``file://`` URL, or a remote URL.
    storage_options
        Options of the fsspec filesystem for a remote URL (ignored for local paths).

    ``location / "zarr.json"`` is the location of a child, ``str(location)`` the path or URL.
    """

    def __init__(self, where: str | os.PathLike, storage_options: dict | None = None):
        if isinstance(where, Location):
            storage_options = storage_options or where.storage_options
            where = str(where)
        where = local_if_file_url(os.fspath(where))
        self.remote = is_url(where)
        self.storage_options = dict(storage_options or {})
        if self.remote:
            self.scheme = URL.match(where).group(1).lower()
            self.url = where.rstrip("/")
            self.path = None
        else:
            self.scheme = "file"
            self.path = Path(where)
            self.url = str(self.path)
        self._fs = None

    # -- naming ---------------------------------------------------------------------------
    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __truediv__(self, name: str) -> Location:
        if not self.remote:
            return Location(self.path / name)
        child = Location.__new__(Location)
        child.__dict__.update(self.__dict__, url=f"{self.url}/{name.strip('/')}")
        return child

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def __getstate__(self):
        return {**self.__dict__, "_fs": None}

    @property
    def name(self) -> str:
        return self.path.name if not self.remote else self.url.rsplit("/", 1)[-1]

    def resolved(self) -> Location:
        """The same location with a local path made absolute (a URL is already)."""
        return self if self.remote else Location(self.path.resolve())

    def key(self) -> str:
        """The location as one comparable string (a resolved local path, or the URL)."""
        return str(self.path.resolve()) if not self.remote else self.url

    def contains(self, other: Location) -> bool:
        """True when ``other`` is this location or lies inside it."""
        mine, theirs = self.key(), other.key()
        return theirs == mine or theirs.startswith(mine.rstrip("/") + "/")

    def relative_link(self, target: Location) -> str:
        """``target`` relative to this folder (for links stored in metadata), else absolute."""
        if self.remote != target.remote or (self.remote and _authority(self) != _authority(target)):
            return str(target)
        if not self.remote:
            return os.path.relpath(target.path.resolve(), self.path.resolve())
        return posixpath.relpath(target.url.split("://", 1)[1], self.url.split("://", 1)[1])

    # -- the filesystem ---------------------------------------------------------------------
    @property
    def fs(self):
        """The fsspec filesystem of a remote location (typed errors when it cannot be made)."""
        if self._fs is None:
            self._fs = filesystem(self.scheme, self.options(), self.url)
        return self._fs

    @property
    def read_only(self) -> bool:
        return self.scheme in READ_ONLY_SCHEMES

    def require_writable(self, what: str = "the output") -> None:
        """Raise :class:`ReadOnlyStoreError` where nothing can be written (``http(s)://``)."""
        if self.read_only:
            raise ReadOnlyStoreError(
                f"{what} {self.url!r} is on a read-only store ({self.scheme}:// can only be read); "
                "write to a local path or to s3://, gs://... instead."
            )

    # -- queries --------------------------------------------------------------------------
    def exists(self) -> bool:
        if not self.remote:
            return self.path.exists()
        with self.translated_errors():
            return bool(self.fs.exists(self.url))

    def is_file(self) -> bool:
        if not self.remote:
            return self.path.is_file()
        with self.translated_errors():
            return bool(self.fs.isfile(self.url))

    def is_empty(self) -> bool:
        """True when nothing is there, or an empty folder."""
        if not self.remote:
            return not self.path.exists() or (self.path.is_dir() and not any(self.path.iterdir()))
        with self.translated_errors():  # a missing bucket or refused keys fail here
            try:
                return not self.fs.ls(self.url, detail=False)
            except FileNotFoundError as error:
                if _names_bucket(error):
                    raise
                return True

    def read_bytes(self) -> bytes:
        """The file's bytes; ``FileNotFoundError`` when there is none."""
        if not self.remote:
            return self.path.read_bytes()
        with self.translated_errors():
            return self.fs.cat_file(self.url)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def read_json(self) -> Any:
        """The file's JSON, or ``None`` when there is no such file or it is not JSON."""
        try:
            return json.loads(self.read_bytes())
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError):
            return None

    def write_bytes(self, data: bytes) -> None:
        """Write a whole file (one PUT on an object store, atomic there)."""
        if not self.remote:
            self.path.write_bytes(data)
            return
        self.require_writable()
        with self.translated_errors():
            self.fs.pipe_file(self.url, data)

    #: Schemes whose :meth:`create` is a true put-if-absent (S3's conditional PUT).
    EXCLUSIVE_SCHEMES = ("file", "s3", "s3a")

    @property
    def exclusive_create(self) -> bool:
        """True when :meth:`create` cannot succeed for two writers at once on this store."""
        return self.scheme in self.EXCLUSIVE_SCHEMES

    def create(self, data: bytes) -> None:
        """Write a new file, or raise ``FileExistsError`` when one is there (for lock files).

        Locally ``O_EXCL``; on S3 a conditional PUT (``If-None-Match: *``), so of two runs
        racing for it exactly one wins. Elsewhere fsspec's ``mode="create"`` where the store
        has it, with no such guarantee (see :attr:`exclusive_create`).
        """
        if not self.remote:
            with open(self.path, "xb") as file:
                file.write(data)
            return
        self.require_writable()
        with self.translated_errors():
            self.fs.pipe_file(self.url, data, mode="create")

    def remove(self) -> None:
        """Delete the file or folder and everything in it; nothing there is fine."""
        if not self.remote:
            if self.path.is_dir():
                shutil.rmtree(self.path)
            elif self.path.exists():
                self.path.unlink()
            return
        self.require_writable()
        with self.translated_errors(), contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.url, recursive=True)

    def zarr_store(self, *, read_only: bool = False):
        """What ``zarr.open(store=...)`` takes: the local path, or an ``FsspecStore``."""
        if not self.remote:
            return str(self.path)
        if not read_only:
            self.require_writable()
        from zarr.storage import FsspecStore

        self.fs  # noqa: B018 - a missing package or unknown scheme raises its typed error here
        store = FsspecStore.from_url(self.url, storage_options=self.options(),
                                     read_only=read_only)
        if not read_only:
            return store
        from blockbuster.read_cache import ReadCache

        return ReadCache(store)

    def options(self) -> dict:
        """The ``storage_options`` given, plus blockbuster's defaults where they are unset:
        s3fs's ``max_concurrency=1``, as chunks are read whole (a larger value costs a HEAD
        request per chunk, to split big objects into parallel ranged reads)."""
        defaults = {"max_concurrency": 1} if self.scheme in ("s3", "s3a") else {}
        return {**defaults, **self.storage_options}

    @contextlib.contextmanager
    def translated_errors(self):
        """Turn the store's access failures into :class:`StoreAccessError` naming the URL."""
        try:
            yield
        except PermissionError as error:
            raise StoreAccessError(
                f"{self.url}: access denied ({error}). Check the credentials: storage_options "
                f"(key/secret, token, profile, anon) or the environment, and for an "
                f"S3-compatible server its endpoint_url.") from error
        except FileNotFoundError as error:
            if not _names_bucket(error):
                raise
            raise StoreAccessError(
                f"{self.url}: the bucket {_authority(self)!r} does not exist ({error}). Check "
                "the bucket name, and endpoint_url/region in storage_options.") from error
        except OSError as error:
            if _is_credentials_error(error):
                raise StoreAccessError(
                    f"{self.url}: the store refused the credentials ({error}). Check "
                    "storage_options (key/secret, token, profile) or the environment.") from error
            raise


def filesystem(scheme: str, storage_options: dict, url: str):
    """The fsspec filesystem for ``scheme``; a missing package or an unknown scheme raises
    :class:`StoreNotInstalledError` naming what to install."""
    try:
        import fsspec
    except ImportError as error:  # pragma: no cover - fsspec comes with dask[array]
        raise StoreNotInstalledError(
            f"{url}: remote stores need fsspec; {REMOTE_EXTRA}.") from error
    try:
        return fsspec.filesystem(scheme, **storage_options)
    except ValueError as error:
        if "protocol not known" not in str(error).lower():
            raise
        raise StoreNotInstalledError(
            f"{url}: no filesystem knows the scheme {scheme}://. Use a local path, s3://, "
            f"gs://, http(s)://, or install the fsspec implementation of {scheme}://."
        ) from error
    except ImportError as error:
        package = SCHEME_PACKAGES.get(scheme, f"the fsspec implementation of {scheme}://")
        raise StoreNotInstalledError(
            f"{url}: reading or writing {scheme}:// needs {package}, which is not installed; "
            f"pip install {package} (or {REMOTE_EXTRA})."
        ) from error
    except TypeError as error:
        raise StoreAccessError(f"{url}: storage_options {sorted(storage_options)} are not "
                               f"options of the {scheme}:// filesystem ({error}).") from error


def _strip_scheme(url: str) -> str:
    return url.split("://", 1)[1]


def _authority(location: Location) -> str:
    return _strip_scheme(location.url).split("/", 1)[0]


def _names_bucket(error: FileNotFoundError) -> bool:
    return "bucket" in str(error).lower()


def _is_credentials_error(error: OSError) -> bool:
    text = str(error)
    return any(code in text for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch",
                                         "AccessDenied", "ExpiredToken", "403"))
