"""Integration with blockbuster-core's tile_process, the registry and `blockbuster run CONFIG`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchnets
from torch import nn

from blockbuster import tile_process
from blockbuster.errors import PixelMapWarning
from blockbuster.metrics import match_objects
from blockbuster.pixelmaps import label_map, whole_image_objects
from blockbuster.plugins.torch import torch_fn
from blockbuster.testing import assert_same_labels

UNET = {"output": "semantic", "pad_multiple": 4, "halo": 24}


def semantic_blob_net() -> nn.Module:
    """Two-class (background, blob) fixed-weight net that also accepts unbatched (C, H, W)."""
    net = nn.Conv2d(1, 2, kernel_size=5, padding=2, padding_mode="replicate")
    with torch.no_grad():
        net.weight[0].fill_(-1.0 / 25.0)
        net.weight[1].fill_(1.0 / 25.0)
        net.bias.copy_(torch.tensor([0.45, -0.45]))
    return net.requires_grad_(False)


@pytest.fixture(scope="module")
def big_disks():
    """A 384x384 image of many disks: 9 tiles of 128x128."""
    return torchnets.make_disks((384, 384), count=110, seed=7)


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_plain_lambda_from_the_issue_with_output_mask_equals_whole_image_components(executor):
    my_model = semantic_blob_net()
    fn = lambda tile: my_model(torch.from_numpy(tile)).argmax(0).numpy()  # noqa: E731  (the issue's own)
    disks, _ = torchnets.make_disks((512, 512), count=160, seed=4, touching_pairs=30)
    image = disks[np.newaxis]  # (C=1, H, W): the model takes unbatched (C, H, W) tensors
    expected = label_map(fn(image), "mask")
    labels = tile_process(image, fn, output="mask", channel_axis=0, tile_shape=(128, 128),
                          overlap=8, executor=executor, workers=2, compute=True)
    assert expected.max() > 150
    assert_same_labels(expected, labels)


def test_plain_lambda_from_the_issue_without_output_warns_with_the_fix(disks):
    my_model = semantic_blob_net()
    fn = lambda tile: my_model(torch.from_numpy(tile)).argmax(0).numpy()  # noqa: E731  (the issue's own)
    with pytest.warns(PixelMapWarning, match=r"pieces in tile .*output='mask'"):
        labels = tile_process(disks[0][np.newaxis], fn, channel_axis=0, tile_shape=(128, 128),
                              overlap=8, compute=True)
    assert labels.max() == 1  # warned, never changed: the tiles' label 1 merged into one


@pytest.mark.parametrize("executor", ["threads", pytest.param("processes", marks=pytest.mark.slow)])
def test_torch_fn_under_executor_matches_whole_image(executor, disks):
    fn = torch_fn(torchnets.BlobNet(), output="probability", threshold=0.0, halo=8, batch_size=4)
    whole = whole_image_objects(fn, disks[0])
    tiled = tile_process(
        disks[0], fn, tile_shape=(96, 96), executor=executor, workers=2, compute=True
    )
    assert_same_labels(whole, tiled)


def dense_texture(shape=(384, 384), seed=5):
    """Noise whose 5x5 mean is above the blob net's cut on ~43% of pixels: ~1600 objects,
    many a pixel apart, as a (C=1, H, W) image."""
    noise = np.random.default_rng(seed).random(shape) - 0.06
    return noise.astype(np.float32)[np.newaxis]


@pytest.mark.parametrize("output", ["semantic", "probability"])
def test_torch_semantic_and_probability_outputs_equal_whole_image_components(output):
    image = dense_texture()
    net = semantic_blob_net()  # 5x5 kernel: every core value is exact with a 2 px halo
    if output == "probability":
        net = nn.Sequential(net, nn.Softmax(dim=1), SecondChannel())
    fn = torch_fn(net, output=output, channels=0, normalize=None, pad_multiple=1, halo=2)
    whole = whole_image_objects(fn, image)
    tiled = tile_process(image, fn, channel_axis=0, tile_shape=(64, 64), compute=True)
    assert whole.max() > 1000
    assert_same_labels(whole, tiled)
    # labelling each tile itself (the pre-pixel-map path) joins objects through the halo
    per_tile = torch_fn(net, output=output, channels=0, normalize=None, pad_multiple=1, halo=2,
                        instance=lambda values: label_map(values, output))
    assert tile_process(image, per_tile, channel_axis=0, tile_shape=(64, 64),
                        compute=True).max() < whole.max()


class SecondChannel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 1:2]


@pytest.mark.slow
@pytest.mark.parametrize("form", ["torchscript", "export", "state_dict"])
def test_trained_unet_tiled_agrees_with_whole_image(form, unet_files, big_disks):
    image, truth = big_disks
    if form == "state_dict":
        fn = torch_fn(torchnets.TinyUNet, weights=unet_files[form], batch_size=4, **UNET)
    else:
        fn = torch_fn(unet_files[form], batch_size=4, **UNET)
    whole = whole_image_objects(fn, image)
    assert match_objects(truth, whole).f1 >= 0.95, "the trained U-Net should find the disks"
    tiled = tile_process(
        image, fn, tile_shape=(128, 128), executor="threads", workers=2, compute=True
    )
    assert match_objects(whole, tiled).f1 >= 0.98


@pytest.mark.slow
def test_batch_sizes_1_and_8_give_identical_labels(trained_unet, big_disks):
    image = big_disks[0][:256, :300]
    results = [
        tile_process(
            image,
            torch_fn(trained_unet, batch_size=size, **UNET),
            tile_shape=(100, 100),
            executor="serial",
            compute=True,
        )
        for size in (1, 8)
    ]
    assert np.array_equal(results[0], results[1])


@pytest.mark.slow
def test_watershed_instances_through_tile_process(trained_unet):
    image = np.zeros((192, 192), np.float32)
    for cy in (48, 144):
        for cx in (48, 144):
            pair = torchnets.touching_pair((64, 64), radius=10)
            image[cy - 32 : cy + 32, cx - 32 : cx + 32] = 0.1 + 0.7 * pair
    fn = torch_fn(trained_unet, instance="watershed", min_distance=5, **UNET)
    labels = tile_process(image, fn, tile_shape=(96, 96), compute=True)
    assert len(np.unique(labels)) - 1 == 8


@pytest.mark.slow
def test_selected_by_name_with_options(unet_files, big_disks):
    image, truth = big_disks
    labels = tile_process(
        image,
        "torch",
        segmenter_options={"model": str(unet_files["torchscript"]), "batch_size": 8, **UNET},
        tile_shape=(128, 128),
        compute=True,
    )
    assert match_objects(truth, labels).f1 >= 0.95


@pytest.mark.slow
def test_blockbuster_run_config_with_torch_segmenter(unet_files, big_disks, tmp_path):
    import zarr

    image, truth = big_disks
    zarr.create_array(store=str(tmp_path / "image.zarr"), data=image, chunks=(128, 128))
    config = tmp_path / "job.toml"
    config.write_text(
        '[input]\npath = "image.zarr"\n\n'
        '[segmenter]\nname = "torch"\n'
        f'model = "{unet_files["torchscript"].as_posix()}"\n'
        'device = "cpu"\nbatch_size = 8\noutput = "semantic"\npad_multiple = 4\nhalo = 24\n\n'
        '[executor]\nname = "processes"\nworkers = 2\n\n'
        '[output]\npath = "labels.zarr"\n'
    )
    cli = Path(sys.executable).with_name("blockbuster")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "blockbuster.cli"]
    run = subprocess.run(
        [*command, "run", str(config)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    labels = np.asarray(zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")[...])
    assert match_objects(truth, labels).f1 >= 0.95
    again = subprocess.run(
        [*command, "run", str(config), "--executor", "threads"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, f"the same job must be recognised as such: {again.stderr}"


def test_unknown_option_by_name_is_a_backend_option_error(disks):
    from blockbuster.errors import BackendOptionError

    with pytest.raises(BackendOptionError, match="batchsize"):
        tile_process(disks[0], "torch", segmenter_options={"model": "x.pt", "batchsize": 2})
