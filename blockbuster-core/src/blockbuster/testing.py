"""Helpers for testing blockbuster and its plugins; also a pytest plugin (``pytest11`` entry point).

For plugin authors:

- :func:`check_segmenter` — the contract checks a segmenter must pass (integer labels of the
  tile's spatial shape, non-negative, picklable, deterministic, sane ``Needs``).
- :func:`assert_same_labels` — two label images are equal up to renumbering.
- the ``blockbuster_registry`` fixture — an isolated :class:`~blockbuster.registry.Registry`
  (entry points not autoloaded) to which a test registers its own plugin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pytest

from blockbuster.registry import Registry
from blockbuster.segmenter import Needs


def assert_same_labels(expected, actual) -> None:
    """Assert ``actual`` partitions the image exactly like ``expected`` (IDs may differ)."""
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    assert expected.shape == actual.shape, f"shapes differ: {expected.shape} vs {actual.shape}"
    assert np.array_equal(expected == 0, actual == 0), "background differs"
    pairs = np.unique(np.stack([expected.ravel(), actual.ravel()]), axis=1)
    n_expected = len(np.unique(expected))
    n_actual = len(np.unique(actual))
    assert pairs.shape[1] == n_expected == n_actual, (
        f"labels are not a renumbering: {n_expected} expected labels, {n_actual} actual labels, "
        f"{pairs.shape[1]} distinct pairs (merged or split objects)"
    )


def check_segmenter(segmenter: Callable, tile: np.ndarray, *, spatial_shape=None) -> np.ndarray:
    """Run the contract checks on ``segmenter`` with one example ``tile``; return its labels."""
    import cloudpickle

    spatial_shape = tuple(spatial_shape or tile.shape)
    labels = np.asarray(segmenter(tile))
    assert labels.shape == spatial_shape, f"labels shape {labels.shape} != {spatial_shape}"
    assert labels.dtype == bool or np.issubdtype(labels.dtype, np.integer), (
        f"labels dtype {labels.dtype} is not integer"
    )
    assert labels.min() >= 0, "labels must be >= 0"
    clone = cloudpickle.loads(cloudpickle.dumps(segmenter))
    assert np.array_equal(np.asarray(clone(tile)), labels), "a pickled copy labels differently"
    assert np.array_equal(np.asarray(segmenter(tile)), labels), "labels are not deterministic"
    needs = getattr(segmenter, "blockbuster_needs", None)
    if callable(needs):
        assert isinstance(needs(), Needs), "blockbuster_needs() must return blockbuster.Needs"
    if callable(getattr(segmenter, "segment_batch", None)):
        batch = segmenter.segment_batch([tile, tile])
        assert len(batch) == 2 and all(np.array_equal(np.asarray(b), labels) for b in batch), (
            "segment_batch must equal calling the segmenter on each tile"
        )
    return labels


@pytest.fixture
def blockbuster_registry() -> Callable[..., Registry]:
    """Build an isolated registry: ``blockbuster_registry(plugin, ...)`` registers those plugins."""

    def build(*plugins: Any, autoload: bool = False, block: Iterable[str] = ()) -> Registry:
        return Registry(autoload=autoload, plugins=plugins, block=block)

    return build
