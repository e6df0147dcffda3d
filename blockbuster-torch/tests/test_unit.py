"""Fast unit tests of the torch segmenter: options, layout, padding, outputs, devices, pickling."""

from __future__ import annotations

import pickle

import cloudpickle
import numpy as np
import pytest
import torch
import torchnets
from torch import nn

from blockbuster import Needs
from blockbuster.backend import threads_per_worker
from blockbuster.errors import (
    BackendOptionError,
    InvalidParameterError,
    ModelNotFoundError,
    TileFunctionError,
)
from blockbuster.metrics import match_objects
from blockbuster.pixelmaps import whole_image_objects
from blockbuster.plugins.torch import TorchSegmenter, torch_fn
from blockbuster.plugins.torch._device import configure_threads, resolve_device
from blockbuster.plugins.torch._loading import _MODEL_CACHE
from blockbuster.plugins.torch._tiles import batches, padded_shape, prepare_tile
from blockbuster.testing import check_segmenter
from blockbuster.worker import WorkerInfo as Worker


class Identity(nn.Module):
    """Returns its input: lets tests feed 'model outputs' directly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class NeedsMultipleOf8(nn.Module):
    """Fails unless both sides are multiples of 8, like a 3-level U-Net."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise RuntimeError(f"Sizes of tensors must match: got {tuple(x.shape)}")
        return x


def blob_fn(**options):
    options = {"output": "probability", "threshold": 0.0, "pad_multiple": 1, **options}
    return torch_fn(torchnets.BlobNet(), **options)


# -- the segmenter on a real (fixed-weight) network -------------------------------------------
def test_blobnet_finds_every_disk(disks):
    image, truth = disks
    fn = blob_fn()
    assert fn(image).shape == image.shape and fn(image).dtype == np.float32
    assert match_objects(truth, whole_image_objects(fn, image)).f1 >= 0.98


def test_passes_core_segmenter_contract_checks(disks):
    check_segmenter(blob_fn(batch_size=4), disks[0][:80, :80])


def test_batch_size_8_equals_batch_size_1_with_ragged_border_tiles(disks):
    tiles = torchnets.border_tiles(disks[0], side=96, halo=16)
    assert len({t.shape for t in tiles}) > 1, "the test needs tiles of several shapes"
    one = blob_fn(batch_size=1, pad_multiple=8)
    eight = blob_fn(batch_size=8, pad_multiple=8)
    singles = [one(t) for t in tiles]
    for single, batched in zip(singles, eight.segment_batch(tiles), strict=True):
        assert np.array_equal(single, batched)


def test_batches_group_by_padded_shape_and_respect_batch_size():
    shapes = [(1, 8, 8)] * 5 + [(1, 8, 4)] * 2
    tiles = [
        prepare_tile(
            np.zeros(s[1:]), channels=None, normalize=None, pad_multiple=1, pad_mode="reflect"
        )
        for s in shapes
    ]
    groups = list(batches(tiles, 2))
    assert sorted(len(g) for g in groups) == [1, 2, 2, 2]
    for group in groups:
        assert len({tiles[i].data.shape for i in group}) == 1
    assert sorted(i for g in groups for i in g) == list(range(7))


def test_empty_batch_returns_empty_list():
    assert blob_fn().segment_batch([]) == []


# -- padding ----------------------------------------------------------------------------------
def test_padded_shape_rounds_each_side_up():
    assert padded_shape((37, 64, 1), 16) == (48, 64, 16)
    assert padded_shape((37, 64), (1, 8)) == (37, 64)
    with pytest.raises(InvalidParameterError, match="spatial axes"):
        padded_shape((5, 5), (4, 4, 4))


@pytest.mark.parametrize("shape", [(37, 53), (8, 8), (1, 3), (95, 130)])
def test_any_tile_shape_works_with_pad_multiple(shape):
    rng = np.random.default_rng(0)
    tile = rng.random(shape).astype(np.float32)
    fn = torch_fn(NeedsMultipleOf8(), output="probability", pad_multiple=8)
    assert np.array_equal(fn(tile), tile)


def test_missing_padding_is_a_tile_function_error_naming_pad_multiple():
    fn = torch_fn(NeedsMultipleOf8(), output="probability", pad_multiple=1)
    with pytest.raises(TileFunctionError, match="pad_multiple"):
        fn(np.zeros((37, 53), np.float32))


def test_output_of_wrong_spatial_size_is_explained():
    fn = torch_fn(nn.MaxPool2d(2), output="probability", pad_multiple=1)
    with pytest.raises(TileFunctionError, match="spatial size"):
        fn(np.zeros((16, 16), np.float32))


def test_volumes_run_through_3d_networks_with_per_axis_padding():
    net = nn.Conv3d(1, 1, kernel_size=3, padding=1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0 / 27.0)
    volume = np.zeros((5, 30, 33), np.float32)
    volume[1:4, 5:12, 5:12] = volume[1:4, 18:26, 20:30] = 1.0
    fn = torch_fn(net, output="probability", threshold=0.5, pad_multiple=(1, 8, 8), batch_size=2)
    labels = whole_image_objects(fn, volume)
    assert labels.shape == volume.shape and labels.max() == 2
    batch = fn.segment_batch([volume, volume])  # floats may differ in the last bit by batch
    assert all(np.array_equal(a > 0.5, fn(volume) > 0.5) for a in batch)


def test_amp_runs_under_autocast_on_cpu(disks):
    labels = whole_image_objects(blob_fn(amp=True), disks[0])
    assert match_objects(disks[1], labels).f1 >= 0.95


# -- outputs and instance conversion ----------------------------------------------------------
def test_instance_output_is_taken_as_labels():
    labels = np.zeros((20, 20), np.float32)
    labels[2:5, 2:5], labels[10:15, 10:12] = 3, 7
    result = torch_fn(Identity(), output="instance", normalize=None)(labels)
    assert np.array_equal(result, labels.astype(np.int32))


def test_semantic_output_is_the_class_map_whose_classes_blockbuster_labels_apart():
    logits = np.zeros((3, 12, 12), np.float32)  # channel axis = classes through Identity
    logits[0] = 1.0
    logits[1, 2:6, 2:6] = 5.0  # class 1 blob
    logits[2, 2:6, 6:10] = 5.0  # class 2 blob touching it
    fn = torch_fn(Identity(), output="semantic", channels=0, normalize=None)
    assert (fn.blockbuster_needs().output, fn(logits)[3, 3], fn(logits)[3, 7]) == ("semantic", 1, 2)
    result = whole_image_objects(fn, logits)
    assert len(np.unique(result[result > 0])) == 2
    assert result[3, 3] != result[3, 7]


def test_probability_output_with_sigmoid_threshold():
    logits = np.full((10, 10), -4.0, np.float32)
    logits[2:4, 2:4] = logits[6:9, 6:9] = 4.0
    fn = torch_fn(Identity(), output="probability", activation="sigmoid", normalize=None)
    needs = fn.blockbuster_needs()
    assert (needs.output, needs.probability_threshold) == ("probability", 0.5)
    result = whole_image_objects(fn, logits)
    assert result.max() == 2 and np.array_equal(result > 0, logits > 0)


def test_watershed_splits_touching_disks_connected_components_does_not():
    pair = torchnets.touching_pair()
    merged = whole_image_objects(
        torch_fn(Identity(), output="probability", instance="connected-components"), pair)
    fn = torch_fn(Identity(), output="probability", instance="watershed", min_distance=5)
    assert np.array_equal(fn(pair), pair)  # the map itself: blockbuster splits it
    split = whole_image_objects(fn, pair)
    assert len(np.unique(merged)) - 1 == 1
    assert len(np.unique(split)) - 1 == 2
    assert np.array_equal(split > 0, pair > 0.5)


def test_probability_watershed_splits_the_stitched_map_as_on_the_whole_image():
    from blockbuster import tile_process
    from blockbuster.synthetic import touching_disks
    from blockbuster.testing import assert_same_labels

    disks = touching_disks((192, 192), radius=9, spacing=17, seed=2)
    fn = torch_fn(Identity(), output="probability", instance="watershed", min_distance=5,
                  normalize=None, halo=0)
    tiled = tile_process(disks, fn, tile_shape=(64, 64), compute=True)
    assert tiled.max() > 80
    assert_same_labels(whole_image_objects(fn, disks), tiled)


def test_components_and_probability_watershed_leave_the_map_to_blockbuster():
    def output_of(**options):
        return torch_fn(Identity(), **options).blockbuster_needs().output

    assert output_of(output="semantic") == "semantic"
    assert output_of(output="probability", instance="connected-components") == "probability"
    assert output_of(output="probability", instance="watershed") == "probability"
    needs = torch_fn(Identity(), output="probability", instance="watershed",
                     min_distance=7).blockbuster_needs()
    assert (needs.instances, needs.min_distance) == ("watershed", 7)
    assert output_of(output="semantic", instance="watershed") == "instances"  # per class, in-tile
    assert output_of(output="semantic", instance=lambda c: c.astype(np.int32)) == "instances"
    assert output_of(output="instances") == output_of(output="instance") == "instances"


def test_user_instance_callable_gets_the_probability_map():
    seen = []

    def halves(probability):
        seen.append(probability.dtype)
        labels = (probability > 0.5).astype(np.int32)
        labels[:, probability.shape[1] // 2 :] *= 2
        return labels

    result = torch_fn(Identity(), output="probability", instance=halves)(
        np.ones((6, 6), np.float32)
    )
    assert seen == [np.float32] and set(np.unique(result)) == {1, 2}


def test_bad_user_instance_result_is_explained():
    fn = torch_fn(Identity(), output="probability", instance=lambda p: p > 0.5)
    with pytest.raises(TileFunctionError, match="integer labels"):
        fn(np.ones((4, 4), np.float32))


def test_wrong_channel_count_for_output_mode_is_explained():
    with pytest.raises(TileFunctionError, match="output='probability'"):
        torch_fn(Identity(), output="semantic")(np.ones((4, 4), np.float32))


# -- channels and normalization ---------------------------------------------------------------
def test_channel_axis_is_moved_first():
    net = nn.Conv2d(2, 1, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
    tile = np.zeros((10, 12, 2), np.float32)
    tile[2:5, 2:5, 0] = 1.0  # channel 0 bright, channel 1 dark: foreground
    tile[6:9, 6:9, :] = 1.0  # both bright: background
    result = torch_fn(net, output="probability", threshold=0.5, channels=-1, pad_multiple=1)(tile)
    assert result.shape == (10, 12) and result[3, 3] > 0.5 and result[7, 7] <= 0.5


def test_bad_channel_axis_is_explained():
    with pytest.raises(InvalidParameterError, match="channel"):
        torch_fn(Identity(), channels=3)(np.zeros((4, 4), np.float32))


@pytest.mark.parametrize(
    ("normalize", "tile", "expected"),
    [
        ("dtype", np.array([[0, 255]], np.uint8), [[0.0, 1.0]]),
        ("dtype", np.array([[0.25, 2.0]], np.float32), [[0.25, 2.0]]),
        (None, np.array([[0, 255]], np.uint8), [[0.0, 255.0]]),
        ((10, 20), np.array([[10, 15]], np.uint16), [[0.0, 0.5]]),
        (lambda t: t * 2, np.array([[1, 2]], np.uint8), [[2.0, 4.0]]),
    ],
)
def test_normalize_options(normalize, tile, expected):
    prepared = prepare_tile(
        tile, channels=None, normalize=normalize, pad_multiple=1, pad_mode="reflect"
    )
    assert np.allclose(prepared.data[0], expected)


def test_percentile_normalization_is_fixed_image_wide_by_prepare(disks):
    image = (disks[0] * 1000).astype(np.float32)
    fn = blob_fn(normalize="percentile", threshold=0.0)
    prepared = fn.prepare(image)
    low, high = prepared.normalize
    assert fn.normalize == "percentile" and low < 200 < 600 < high
    assert match_objects(disks[1], whole_image_objects(prepared, image)).f1 >= 0.98


# -- options and errors -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {"batch_size": 0},
        {"output": "boxes"},
        {"instance": "magic"},
        {"dtype": "int8"},
        {"normalize": "zscore"},
        {"pad_multiple": 0},
        {"halo": -1},
        {"activation": "relu"},
        {"pad_mode": "wrap-around"},
    ],
)
def test_bad_option_values_raise_invalid_parameter(options):
    with pytest.raises(InvalidParameterError):
        torch_fn(Identity(), **options)


def test_unknown_option_is_a_backend_option_error_listing_valid_ones():
    with pytest.raises(BackendOptionError, match="valid options.*batch_size"):
        torch_fn(Identity(), batchsize=8)


def test_an_option_of_the_wrong_type_is_one_typed_error_naming_it():
    with pytest.raises(BackendOptionError, match=r"batch_size='eight' should be int or one of "
                                                 r"'auto' or None, not str"):
        torch_fn(Identity(), batch_size="eight")
    with pytest.raises(BackendOptionError, match=r"threshold='high' should be float"):
        torch_fn(Identity(), threshold="high")


def test_needs_default_and_override():
    assert torch_fn(Identity(), batch_size=4).blockbuster_needs() == Needs(
        halo=32, bytes_per_voxel=1024.0
    )
    assert torch_fn(Identity(), halo=(4, 8), bytes_per_voxel=40).blockbuster_needs() == Needs(
        halo=(4, 8), bytes_per_voxel=40
    )


# -- devices and threads ----------------------------------------------------------------------
def test_auto_device_is_cpu_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert resolve_device("auto", Worker(1, 2)) in ("cpu", "mps")
    assert resolve_device("cpu", Worker()) == "cpu"


def test_cuda_without_gpu_is_explained():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(InvalidParameterError, match="device='auto'"):
        resolve_device("cuda", Worker())


def test_auto_device_spreads_workers_over_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [resolve_device("auto", Worker(i, 3)) for i in range(3)] == [
        "cuda:0",
        "cuda:1",
        "cuda:0",
    ]


def test_threads_are_cores_divided_by_workers():
    assert threads_per_worker(Worker(0, 2), cores=8) == 4
    assert threads_per_worker(Worker(0, 16), cores=8) == 1
    before = torch.get_num_threads()
    try:
        configure_threads("auto", Worker(0, 64))
        assert torch.get_num_threads() == 1
        configure_threads(None, Worker(0, 1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# -- pickling and caching ---------------------------------------------------------------------
def test_pickled_segmenter_carries_no_loaded_model_and_reloads(tmp_path, disks):
    path = tmp_path / "blob.pt"
    torchnets.save_torchscript(torchnets.BlobNet(), path)
    fn = torch_fn(str(path), output="probability", threshold=0.0, pad_multiple=1)
    expected = fn(disks[0])
    assert len(_MODEL_CACHE) == 1
    payload = pickle.dumps(fn)
    assert len(payload) < 5000, "the model must not travel with the segmenter"
    _MODEL_CACHE.clear()
    assert np.array_equal(pickle.loads(payload)(disks[0]), expected)


def test_in_memory_module_is_loaded_once_per_process_and_survives_cloudpickle(disks):
    fn = blob_fn()
    clone = cloudpickle.loads(cloudpickle.dumps(fn))
    fn(disks[0][:32, :32])
    fn(disks[0][:32, :32])
    assert len(_MODEL_CACHE) == 1
    assert np.array_equal(clone(disks[0]), fn(disks[0]))
    assert isinstance(fn, TorchSegmenter) and "BlobNet" in repr(fn)


def test_fingerprint_follows_model_content_and_result_options(tmp_path):
    first, second = torchnets.BlobNet(), torchnets.BlobNet()
    fingerprint = torch_fn(first, batch_size=1).blockbuster_fingerprint()
    assert torch_fn(second, batch_size=8, device="cpu").blockbuster_fingerprint() == fingerprint
    assert torch_fn(first, threshold=0.7).blockbuster_fingerprint() != fingerprint
    with torch.no_grad():
        second.conv.bias.fill_(0.0)
    assert torch_fn(second).blockbuster_fingerprint() != fingerprint
    path = tmp_path / "blob.pt"
    torchnets.save_torchscript(first, path)
    assert str(path) in torch_fn(str(path)).blockbuster_fingerprint()


def test_model_is_in_eval_mode_and_runs_without_autograd():
    calls = []

    class Probe(nn.Module):
        def forward(self, x):
            calls.append((self.training, torch.is_inference_mode_enabled()))
            return x

    torch_fn(Probe().train(), output="probability")(np.zeros((4, 4), np.float32))
    assert calls == [(False, True)]


# -- model sources ----------------------------------------------------------------------------
def test_missing_model_file_is_model_not_found_with_advice(tmp_path):
    with pytest.raises(ModelNotFoundError, match="torch.jit.save"):
        torch_fn(str(tmp_path / "nope.pt"))


def test_state_dict_given_as_model_file_is_explained(tmp_path):
    path = tmp_path / "state.pth"
    torch.save(torchnets.BlobNet().state_dict(), path)
    fn = torch_fn(str(path))
    with pytest.raises(BackendOptionError, match="weights="):
        fn(np.zeros((4, 4), np.float32))


def test_factory_without_weights_is_explained():
    with pytest.raises(BackendOptionError, match="weights="):
        torch_fn(torchnets.BlobNet)


def test_unsupported_model_type_is_explained():
    with pytest.raises(BackendOptionError, match="nn.Module"):
        torch_fn(42)


@pytest.mark.parametrize("form", ["torchscript", "export", "factory", "factory-string"])
def test_every_model_source_gives_the_same_labels(form, tmp_path, disks):
    net = torchnets.BlobNet().eval()
    options = {"output": "probability", "threshold": 0.0, "pad_multiple": 1}
    if form == "torchscript":
        torchnets.save_torchscript(net, tmp_path / "blob.pt")
        fn = torch_fn(str(tmp_path / "blob.pt"), **options)
    elif form == "export":
        torchnets.export_dynamic(net, tmp_path / "blob.pt2", multiple=1)
        fn = torch_fn(tmp_path / "blob.pt2", **options)
    else:
        torch.save(net.state_dict(), tmp_path / "blob.pth")
        factory = torchnets.BlobNet if form == "factory" else "torchnets:BlobNet"
        fn = torch_fn(factory, weights=tmp_path / "blob.pth", **options)
    tile = disks[0][:70, :90]
    assert np.array_equal(fn(tile), blob_fn()(tile))


def test_unimportable_factory_string_is_explained(tmp_path):
    torch.save(torchnets.BlobNet().state_dict(), tmp_path / "blob.pth")
    fn = torch_fn("no_such_pkg.nets:UNet", weights=tmp_path / "blob.pth")
    with pytest.raises(BackendOptionError, match="cannot be imported"):
        fn(np.zeros((4, 4), np.float32))


def test_user_module_is_not_mutated_when_dtype_changes():
    net = torchnets.BlobNet()
    torch_fn(net, output="probability", dtype="float64", pad_multiple=1)(
        np.zeros((4, 4), np.float32)
    )
    assert net.conv.weight.dtype == torch.float32
