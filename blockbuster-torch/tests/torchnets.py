"""Small real networks and synthetic data for the torch backend tests (and the bench)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn


def make_disks(shape=(256, 256), count=40, radius=(5, 9), seed=0, touching_pairs=0):
    """Bright disks on a dark noisy background; returns (image float32, labels int32).

    Disks do not touch unless ``touching_pairs`` > 0 adds that many pairs of disks
    that touch each other (for watershed tests).
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centers: list[tuple[float, float, float]] = []
    tries = 0
    while len(centers) < count and tries < 10000:
        tries += 1
        r = rng.uniform(*radius)
        cy, cx = rng.uniform(r + 1, shape[0] - r - 1), rng.uniform(r + 1, shape[1] - r - 1)
        if all((cy - y) ** 2 + (cx - x) ** 2 > (r + q + 3) ** 2 for y, x, q in centers):
            centers.append((cy, cx, r))
    for index, (cy, cx, r) in enumerate(centers, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = index
    image = np.where(labels > 0, rng.uniform(0.6, 0.9, size=count + 1)[labels], 0.1)
    image = image + rng.normal(0, 0.08, size=shape)
    return image.astype(np.float32), labels


def touching_pair(shape=(64, 64), radius=10):
    """Two equal disks touching at the centre: a mask watershed must split."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cy, cx = shape[0] / 2, shape[1] / 2
    left = (yy - cy) ** 2 + (xx - (cx - radius + 1)) ** 2 <= radius**2
    right = (yy - cy) ** 2 + (xx - (cx + radius - 1)) ** 2 <= radius**2
    return (left | right).astype(np.float32)


class BlobNet(nn.Module):
    """Fixed-weight bright-blob finder: 5x5 mean filter minus 0.45 (probability logit)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, kernel_size=5, padding=2, padding_mode="replicate")
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 25.0)
            self.conv.bias.fill_(-0.45)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class TinyUNet(nn.Module):
    """Two-level U-Net (sides must be multiples of 4) returning ``classes`` logits."""

    def __init__(self, in_channels: int = 1, classes: int = 2, width: int = 8) -> None:
        super().__init__()
        self.enc1 = _double_conv(in_channels, width)
        self.enc2 = _double_conv(width, 2 * width)
        self.mid = _double_conv(2 * width, 2 * width)
        self.up2 = nn.ConvTranspose2d(2 * width, 2 * width, 2, stride=2)
        self.dec2 = _double_conv(4 * width, width)
        self.up1 = nn.ConvTranspose2d(width, width, 2, stride=2)
        self.dec1 = _double_conv(2 * width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
        m = self.mid(nn.functional.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)


def train_unet(steps: int = 60, crop: int = 32, seed: int = 0) -> TinyUNet:
    """Train a TinyUNet on random crops of synthetic disks (a fixed number of steps,
    so the weights do not depend on machine load; a few seconds on one CPU core)."""
    torch.manual_seed(seed)
    net = TinyUNet()
    image, labels = make_disks((256, 256), count=60, seed=seed + 100)
    x_all = torch.from_numpy(image)[None, None]
    y_all = torch.from_numpy((labels > 0).astype(np.int64))[None]
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        ys, xs = rng.integers(0, 256 - crop, size=(2, 8))
        xb = torch.cat(
            [x_all[..., y : y + crop, x : x + crop] for y, x in zip(ys, xs, strict=True)]
        )
        yb = torch.cat(
            [y_all[..., y : y + crop, x : x + crop] for y, x in zip(ys, xs, strict=True)]
        )
        loss = nn.functional.cross_entropy(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def export_dynamic(net: nn.Module, path, multiple: int = 4) -> None:
    """Save ``net`` as a torch.export program with dynamic batch and spatial sizes."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    height = multiple * torch.export.Dim("h_blocks", min=1, max=4096)
    width = multiple * torch.export.Dim("w_blocks", min=1, max=4096)
    example = torch.zeros(2, 1, 8 * multiple, 8 * multiple)
    program = torch.export.export(
        net.eval(), (example,), dynamic_shapes={"x": {0: batch, 2: height, 3: width}}
    )
    torch.export.save(program, str(path))


def border_tiles(image: np.ndarray, side: int = 96, halo: int = 16) -> list[np.ndarray]:
    """Overlapping tiles of ``image`` as a tiler cuts them: border tiles are smaller."""
    tiles = []
    for y in range(0, image.shape[0], side):
        for x in range(0, image.shape[1], side):
            window = (
                slice(max(0, y - halo), y + side + halo),
                slice(max(0, x - halo), x + side + halo),
            )
            tiles.append(image[window])
    return tiles


def save_torchscript(net: nn.Module, path) -> None:
    """Script and save ``net`` (torch >= 2.10 flags TorchScript as deprecated; still supported)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(net), str(path))
