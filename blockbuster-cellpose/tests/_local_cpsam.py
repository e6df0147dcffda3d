"""Cellpose-SAM weights that find bright blobs, for testing the real Cellpose 4 code offline.

No Cellpose-SAM weights can be downloaded here, and random ones find no cells (and, with
global attention, give labels that depend on the whole tile). These weights turn the stock
``cellpose.vit.CPSAM`` network (ViT-L, 305 M parameters, every layer still computed) into a
local filter: each transformer block adds zero, the first layer norm sees the 8x8 pixels of a
patch (plus a large constant, so it only rescales), the neck's 3x3 convolution computes for
every pixel a Gaussian blur of its 17x17 neighbourhood and the blur's gradient, and the
read-out maps them to Cellpose's outputs: flows = gradient (they point at blob centres),
cell probability = blur above a level. Cellpose's own pipeline then runs unchanged
(``CellposeModel`` construction and bfloat16 cast, normalization, padding and tiling in
``run_net``, flow dynamics, masks), and the result is the same on a tile as on the whole
image, so tiled-vs-whole-image tests mean something.
"""

from __future__ import annotations

import numpy as np

PATCH = 8  # CPSAM's token size (ps)
RADIUS = 8  # filter reach: any 17x17 window fits in the 3x3 patches around a pixel's patch
SIGMA = 3.0
BIG = 1000.0  # constant channels that dominate the first layer norm's variance
CARRY = 100.0  # gain of the constant into the second layer norm (dominates it likewise)
BLOB_SIGMA = 6.0
BLOB_RADIUS = 10  # true label of a blob: the disk of this radius around its centre


def blob_filters(sigma: float = SIGMA, radius: int = RADIUS) -> dict[str, np.ndarray]:
    """Correlation kernels: y- and x-gradient of a Gaussian blur, and the blur."""
    d = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    blur = np.exp(-(dy**2 + dx**2) / (2 * sigma**2))
    blur /= blur.sum()
    return {"dy": dy * blur, "dx": dx * blur, "blur": blur}


def _neck_kernel(filters: list[np.ndarray]) -> np.ndarray:
    """3x3 convolution over patch tokens equal to correlating pixels with ``filters``.

    Output channel ``c*64 + a*8 + b`` is filter ``c`` at pixel ``(a, b)`` of the patch; input
    channel ``a2*8 + b2`` of the neighbouring patch ``(di-1, dj-1)`` holds pixel ``(a2, b2)``.
    """
    n = PATCH * PATCH
    kernel = np.zeros((len(filters) * n, n, 3, 3), np.float32)
    a, b, di, dj, a2, b2 = np.meshgrid(*[np.arange(PATCH)] * 2, *[np.arange(3)] * 2,
                                       *[np.arange(PATCH)] * 2, indexing="ij")
    dy = PATCH * (di - 1) + a2 - a
    dx = PATCH * (dj - 1) + b2 - b
    inside = (abs(dy) <= RADIUS) & (abs(dx) <= RADIUS)
    for c, weights in enumerate(filters):
        values = np.where(inside, weights[np.clip(dy + RADIUS, 0, 2 * RADIUS),
                                          np.clip(dx + RADIUS, 0, 2 * RADIUS)], 0.0)
        kernel[c * n + a * PATCH + b, a2 * PATCH + b2, di, dj] = values
    return kernel


def blob_cpsam_state(flow_gain: float = 40.0, prob_gain: float = 20.0,
                     prob_level: float = 0.3) -> dict:
    """State dict of a ``cellpose.vit.CPSAM`` whose outputs are flows towards blob centres."""
    import torch
    from cellpose.vit import CPSAM

    net = CPSAM()
    encoder, n = net.encoder, PATCH * PATCH
    conv1, norm1, conv3, norm2 = encoder.neck
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.zero_()
        # tokens: the patch's pixels (input channel 0), their negatives (channel mean 0), +-BIG
        proj = encoder.patch_embed.proj
        for k in range(n):
            proj.weight[k, 0, k // PATCH, k % PATCH] = 1.0
            proj.weight[n + k, 0, k // PATCH, k % PATCH] = -1.0
        proj.bias[2 * n], proj.bias[2 * n + 1] = BIG, -BIG
        # transformer blocks: zero norms and biases, so attention and MLP add exactly 0
        for k in range(2 * n + 2):
            conv1.weight[k, k, 0, 0] = 1.0
        norm1.weight.fill_(1.0)
        norm2.weight.fill_(1.0)
        filters = blob_filters()
        kernel = torch.from_numpy(_neck_kernel([filters["dy"], filters["dx"], filters["blur"]]))
        outputs = 3 * n
        conv3.weight[:outputs, :n] = kernel
        conv3.weight[outputs, :n] = -kernel.sum(0)  # keeps the channel mean exactly 0
        conv3.weight[outputs + 1, 2 * n, 1, 1] = CARRY
        conv3.weight[outputs + 2, 2 * n + 1, 1, 1] = CARRY
        # a layer norm over 256 channels holding +-c divides by c / sqrt(128): the first by
        # BIG / sqrt(128), the second by CARRY; undo both in the read-out
        scale = BIG / np.sqrt(128.0) * CARRY
        gains = torch.tensor([flow_gain] * 2 * n + [prob_gain] * n)
        net.out.weight[:, :outputs, 0, 0] = torch.diag(gains * scale)
        net.out.bias[2 * n:] = -prob_gain * prob_level
        net.W2.copy_(torch.eye(outputs).reshape(outputs, 3, PATCH, PATCH))
        net.diam_mean.fill_(30.0)
        net.diam_labels.fill_(30.0)
    return net.state_dict()


def synthetic_blobs(shape=(256, 256), *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(image, labels)``: Gaussian blobs (sigma 6 px, >= 26 px apart) on weak noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres: list[np.ndarray] = []
    for _ in range(shape[0] * shape[1] // 100):
        centre = rng.uniform(BLOB_RADIUS, np.array(shape) - BLOB_RADIUS)
        if all(np.hypot(*(centre - c)) > 26 for c in centres):
            centres.append(centre)
    image = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int32)
    for label, (cy, cx) in enumerate(centres, start=1):
        dist2 = (yy - cy) ** 2 + (xx - cx) ** 2
        image = np.maximum(image, np.exp(-dist2 / (2 * BLOB_SIGMA**2)) * rng.uniform(0.6, 1.0))
        labels[dist2 <= BLOB_RADIUS**2] = label
    image += rng.normal(0, 0.02, shape).astype(np.float32)
    return image.astype(np.float32), labels
