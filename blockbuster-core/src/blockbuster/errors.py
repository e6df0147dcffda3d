"""Typed errors: every failure blockbuster reports is a :class:`BlockbusterError`.

Each error names the problem and the fix. Errors that also fit a builtin category subclass
it too (``InvalidParameterError`` is a ``ValueError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class BlockbusterError(Exception):
    """Base class of every error raised by blockbuster."""

    def __reduce__(self):  # keep subclasses (and their attributes) picklable across processes
        return (self.__class__, self.args, self.__dict__ or None)


class InvalidParameterError(BlockbusterError, ValueError):
    """A parameter has the wrong type, rank or value (tile shape, overlap, merge, ...)."""


class ImageReadError(BlockbusterError, ValueError):
    """The input is not an image blockbuster can read (not an array, unknown format, ...), or a
    tile of it could not be read (a damaged chunk, a store that keeps failing): then the message
    names the tile, its bounds, the chunk where known, and the cause."""


class IntensityImageError(BlockbusterError, ValueError):
    """The image to measure for the object table does not fit the labels (its spatial shape
    differs): the message gives both shapes and the layout expected."""


class TileFunctionError(BlockbusterError, RuntimeError):
    """The segmentation function failed or returned something that is not labels for a tile."""


class PixelMapWarning(UserWarning):
    """``fn``'s labels look like a mask or class map (few labels, one in many pieces): without
    ``output="mask"`` (or ``"semantic"``/``"probability"``) every tile's pieces merge into one
    object."""


class ContractViolationError(TileFunctionError):
    """``fn`` returned something that breaks the segmenter contract (shape, dtype, count).

    Deterministic, so never retried: the same tile would break it again.
    """


class NotTwoDimensionalError(InvalidParameterError):
    """An operation that works on 2D label images (polygons) was given a 3D one; the message
    says which plane to pick (``plane=``) or how to go on."""


class OptionalDependencyError(BlockbusterError, ImportError):
    """A feature needs packages of an optional extra that are not installed; the message says
    which ``pip install`` brings them."""


class OutputExistsError(BlockbusterError, FileExistsError):
    """``write_to`` already holds data that this run would overwrite."""


class OutputLockedError(BlockbusterError, RuntimeError):
    """Another run holds the lock on this output (see :mod:`blockbuster.lock`); the message
    names it (host, pid, since when) and says what to do."""


class OutputWriteError(BlockbusterError, OSError):
    """Writing the stage, the output or the table failed; the message names the path, the
    tile and its bounds, the cause, how much is done and that rerunning the same call resumes."""


class DiskFullError(OutputWriteError):
    """An :class:`OutputWriteError` because the disk (or quota) is full: free space, rerun."""


class StageMismatchError(BlockbusterError, FileExistsError):
    """The staging area left by a crashed run belongs to a different job; it cannot resume."""


class TilesFailedError(BlockbusterError, RuntimeError):
    """With ``keep_going=True``: some tiles failed after their retries; the rest are staged."""


class RunCancelledError(BlockbusterError, RuntimeError):
    """A progress listener stopped the run (a GUI's Cancel); finished tiles stay staged, so
    running the same call again resumes from them."""


class WorkerCrashedError(BlockbusterError, RuntimeError):
    """A worker process died mid-run; finished tiles stay staged for a resume."""


class MissingMainGuardError(WorkerCrashedError):
    """The ``processes`` executor was started from a script's top level without the
    ``if __name__ == "__main__":`` guard, so each worker would rerun the script."""


class NotPicklableError(BlockbusterError, TypeError):
    """The function cannot be sent to worker processes."""


class TooManyLabelsError(BlockbusterError, OverflowError):
    """A tile produced more labels than its provisional ID budget."""


class ModelNotFoundError(BlockbusterError, FileNotFoundError):
    """Model weights are missing locally and downloads are off (offline) or failed."""


class UnsupportedModelError(BlockbusterError, ValueError):
    """A model's own description asks for something the backend cannot run (yet), e.g. an
    output kind, axis type or processing step; the message says which and what to do."""


class PluginError(BlockbusterError):
    """Base class of plugin discovery and selection errors."""


class UnknownBackendError(PluginError, LookupError):
    """No installed plugin provides a backend of that name."""


class BackendNotInstalledError(PluginError, LookupError):
    """The backend is known to blockbuster but its package is not installed."""


class BackendBrokenError(PluginError, ImportError):
    """The backend's package is installed but failed to import."""


class BackendBlockedError(PluginError, LookupError):
    """The backend's plugin is installed but blocked (``[plugins] block`` or ``block=``)."""


class BackendOptionError(PluginError, TypeError):
    """A backend was given an option it does not accept."""


class PluginContractError(PluginError, TypeError):
    """A backend made an object that lacks a member its kind's contract requires."""


class ConfigError(BlockbusterError, ValueError):
    """A configuration file is invalid; the message names the file, section and key."""


class StoreError(BlockbusterError):
    """Base class of the errors of remote stores (``s3://``, ``gs://``, ``https://``...)."""


class StoreNotInstalledError(StoreError, ImportError):
    """The URL's scheme is unknown, or the package that reads it (s3fs, gcsfs...) is missing."""


class StoreAccessError(StoreError, PermissionError):
    """The store refused the credentials, or the bucket does not exist."""


class ReadOnlyStoreError(StoreError, PermissionError):
    """An output was given on a store that can only be read (``http://``, ``https://``)."""
