"""Tiny bioimage.io model packages for the tests, built with bioimageio.spec's own classes.

- :func:`build_unet_package`: a tiny U-Net (one pooling level) with TorchScript weights whose
  output is a foreground probability (``scale_range`` percentile preprocessing, ``sigmoid``
  postprocessing): a semantic-output model.
- :func:`build_semantic_package`: the same U-Net's decision as two per-class score channels.
- :func:`build_instance_package`: a net that thresholds a smoothed, standardised image
  (``zero_mean_unit_variance``) and labels the foreground's 4-connected components itself
  (max-label propagation until it settles), so its output already is instance labels.

Both declare a halo, a parameterized input size (``min + n * step``) and run in milliseconds.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

HALO = 8
CHANNELS = {"semantic": ["background", "blob"]}
MIN_SIZE, STEP = 32, 16


class TinyUNet(nn.Module):
    """conv -> pool -> conv -> upsample -> conv on concatenated skip: logits, 1 channel."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(1, 4, 3, padding=1)
        self.bottom = nn.Conv2d(4, 4, 3, padding=1)
        self.up = nn.Conv2d(8, 1, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.upsample = nn.Upsample(scale_factor=2.0, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = torch.relu(self.down(x))
        deep = torch.relu(self.bottom(self.pool(skip)))
        return self.up(torch.cat([skip, self.upsample(deep)], dim=1))


def blob_detector(net: TinyUNet) -> TinyUNet:
    """Fixed weights that make the U-Net find bright blobs: the logit is a local mean at full
    and at half resolution (through the pooling path), minus a bias."""
    with torch.no_grad():
        for conv in (net.down, net.bottom, net.up):
            conv.weight.zero_()
            conv.bias.zero_()
        net.down.weight[0, 0, 1, 1] = 1.0
        net.bottom.weight[0, 0] = 1.0 / 9.0
        net.up.weight[0, 0] = 5.0 / 9.0   # the skip's first channel
        net.up.weight[0, 4] = 5.0 / 9.0   # the upsampled deep path's first channel
        net.up.bias.fill_(-2.0)
    return net


class ThresholdAndLabel(nn.Module):
    """Smooth, threshold at 0 (the image is standardised) and label 4-connected components."""

    def __init__(self) -> None:
        super().__init__()
        self.smooth = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.smooth.weight.fill_(1.0 / 9.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        foreground = (self.smooth(x) > 0.5).to(torch.float32)
        n, c, h, w = foreground.shape
        ids = torch.arange(1, h * w + 1, dtype=torch.float32).reshape(1, 1, h, w)
        labels = ids * foreground
        while True:
            grown = torch.maximum(labels, _cross_max(labels)) * foreground
            if bool(torch.equal(grown, labels)):
                break
            labels = grown
        return labels.to(torch.int32)


def _cross_max(labels: torch.Tensor) -> torch.Tensor:
    """Per pixel, the largest of its four face neighbours."""
    padded = torch.nn.functional.pad(labels, (1, 1, 1, 1))
    return torch.maximum(
        torch.maximum(padded[:, :, :-2, 1:-1], padded[:, :, 2:, 1:-1]),
        torch.maximum(padded[:, :, 1:-1, :-2], padded[:, :, 1:-1, 2:]),
    )


def build_unet_package(folder: Path) -> Path:
    """The semantic-output package (``unet.zip``) in ``folder``."""
    net = blob_detector(TinyUNet()).eval()
    return _package(folder, "unet", _scripted(net), preprocessing="scale_range",
                    output="probability")


class TwoClasses(nn.Module):
    """Per-class scores ``(background, blob)`` from the blob-detecting U-Net's logit."""

    def __init__(self) -> None:
        super().__init__()
        self.unet = blob_detector(TinyUNet())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = self.unet(x)
        return torch.cat([-logit, logit], dim=1)


def build_semantic_package(folder: Path) -> Path:
    """The two-class semantic package (``semantic.zip``): the U-Net's decision as scores."""
    return _package(folder, "semantic", _scripted(TwoClasses().eval()),
                    preprocessing="scale_range", output="semantic")


def build_instance_package(folder: Path) -> Path:
    """The instance-output package (``instances.zip``) in ``folder``."""
    return _package(folder, "instances", _scripted(ThresholdAndLabel().eval()),
                    preprocessing="zero_mean_unit_variance", output="instance")


def _scripted(net: nn.Module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(net)


def test_image(shape=(96, 96), seed: int = 0) -> np.ndarray:
    """Bright blobs on a dark background (uint16), objects well below the halo."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    centres = rng.integers(4, np.array(shape) - 4, size=(max(4, shape[0] * shape[1] // 400), 2))
    image[tuple(centres.T)] = 1.0
    image = ndimage.gaussian_filter(image, 1.5) * 4000 + rng.normal(100, 10, shape)
    return np.clip(image, 0, 65535).astype(np.uint16)


def _package(folder: Path, name: str, scripted, *, preprocessing: str, output: str) -> Path:
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5

    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.pt"
    with warnings.catch_warnings():  # TorchScript is what bioimage.io packages ship
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(scripted, str(weights))
    example = test_image((MIN_SIZE + 2 * STEP, MIN_SIZE + 2 * STEP), seed=1)
    input_path, output_path = folder / f"{name}_in.npy", folder / f"{name}_out.npy"
    np.save(input_path, example[None, None])
    np.save(output_path, _reference_output(scripted, example, preprocessing, output))

    input_id = v0_5.TensorId("raw")
    size = v0_5.ParameterizedSize(min=MIN_SIZE, step=STEP)
    input_descr = v0_5.InputTensorDescr(
        id=input_id,
        axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier("raw")]),
              v0_5.SpaceInputAxis(id=v0_5.AxisId("y"), size=size),
              v0_5.SpaceInputAxis(id=v0_5.AxisId("x"), size=size)],
        test_tensor=v0_5.FileDescr(source=input_path),
        data=v0_5.IntervalOrRatioDataDescr(type="uint16"),
        preprocessing=_preprocessing(preprocessing),
    )
    output_descr = v0_5.OutputTensorDescr(
        id=v0_5.TensorId("prediction"),
        axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[
                  v0_5.Identifier(c) for c in CHANNELS.get(output, [output])]),
              *[v0_5.SpaceOutputAxisWithHalo(
                  id=v0_5.AxisId(axis), halo=HALO,
                  size=v0_5.SizeReference(tensor_id=input_id, axis_id=v0_5.AxisId(axis)))
                for axis in ("y", "x")]],
        test_tensor=v0_5.FileDescr(source=output_path),
        data=(v0_5.IntervalOrRatioDataDescr(type="int32") if output == "instance"
              else v0_5.IntervalOrRatioDataDescr(type="float32")),
        postprocessing=[v0_5.SigmoidDescr()] if output == "probability" else [],
    )
    descr = v0_5.ModelDescr(
        name=f"blockbuster test {name}",
        description=f"A tiny {output}-output model for blockbuster's tests.",
        authors=[v0_5.Author(name="blockbuster")],
        cite=[v0_5.CiteEntry(text="blockbuster", url="https://example.com/blockbuster")],
        license="BSD-3-Clause",
        documentation=v0_5.FileDescr(source=_readme(folder, name)),
        inputs=[input_descr],
        outputs=[output_descr],
        weights=v0_5.WeightsDescr(torchscript=v0_5.TorchscriptWeightsDescr(
            source=weights, pytorch_version=v0_5.Version(torch.__version__.split("+")[0]))),
    )
    return save_bioimageio_package(descr, output_path=folder / f"{name}.zip")


def _preprocessing(kind: str) -> list:
    from bioimageio.spec.model import v0_5

    axes = [v0_5.AxisId("y"), v0_5.AxisId("x")]
    if kind == "scale_range":
        scale = v0_5.ScaleRangeDescr(kwargs=v0_5.ScaleRangeKwargs(
            axes=axes, min_percentile=1.0, max_percentile=99.8))
    else:
        scale = v0_5.ZeroMeanUnitVarianceDescr(kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=axes))
    return [scale, v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32"))]


def _reference_output(scripted, image: np.ndarray, preprocessing: str, output: str) -> np.ndarray:
    """The test tensor, as ``bioimageio.core.test_model`` reproduces it (no halo padding)."""
    x = image.astype(np.float64)
    if preprocessing == "scale_range":
        low, high = np.percentile(x, [1.0, 99.8])
        x = (x - low) / (high - low + 1e-6)
    else:
        x = (x - x.mean()) / (x.std() + 1e-6)
    with torch.no_grad():
        result = scripted(torch.from_numpy(x.astype(np.float32))[None, None])
    if output == "probability":
        result = torch.sigmoid(result)
    return result.numpy()


def _readme(folder: Path, name: str) -> Path:
    path = folder / f"{name}_README.md"
    path.write_text(f"# {name}\n\nA test model.\n\n## Validation\n\nNone: it is a test model.\n")
    return path
