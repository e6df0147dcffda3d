"""Throughput of the torch backend: tiles per second for several batch sizes.

    python bench/bench_torch.py                       # CPU, 256x256 tiles, batch 1, 4, 8
    python bench/bench_torch.py --device cuda --tiles 256 --tile-size 512

The model is a 4-level 2D U-Net (random weights: speed does not depend on them).
Two figures per batch size:

- ``forward``  tiles/s of the network alone (stacked tensors in, logits out);
- ``segment``  tiles/s of ``TorchSegmenter.segment_batch`` (normalize, pad, forward,
  argmax and connected components), i.e. what ``tile_process`` gets per worker;
- ``CPU s/tile`` process CPU seconds per tile of ``segment`` (all threads), a figure
  that stays meaningful when other programs share the machine.

Not part of the test suite (a smoke test runs it with tiny settings).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from torch import nn

from blockbuster.plugins.torch import torch_fn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BenchUNet(nn.Module):
    """A 4-level U-Net (sides must be multiples of 16) with ``width`` base channels."""

    def __init__(self, width: int = 16, classes: int = 2, levels: int = 4) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(levels + 1)]
        self.down = nn.ModuleList(
            [_block(1, widths[0])]
            + [_block(a, b) for a, b in zip(widths, widths[1:], strict=False)]
        )
        self.up = nn.ModuleList(
            [
                nn.ConvTranspose2d(b, a, 2, stride=2)
                for a, b in zip(widths, widths[1:], strict=False)
            ]
        )
        self.merge = nn.ModuleList([_block(2 * a, a) for a in widths[:-1]])
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for index, block in enumerate(self.down):
            x = block(x if index == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(reversed(self.up), reversed(self.merge), strict=True):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def make_tiles(count: int, side: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` random uint16 tiles of ``side`` x ``side``."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 4000, size=(side, side), dtype=np.uint16) for _ in range(count)]


class Clock:
    """Wall-clock and process CPU seconds of a block (CPU time is robust to a busy machine)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def time_forward(net: nn.Module, tiles: list[np.ndarray], batch_size: int, device: str) -> Clock:
    """Time pushing ``tiles`` through ``net`` in batches (network only)."""
    stack = torch.from_numpy(np.stack(tiles).astype(np.float32))[:, None]
    _sync(device)
    with Clock() as clock, torch.inference_mode():
        for first in range(0, len(tiles), batch_size):
            net(stack[first : first + batch_size].to(device)).argmax(1).cpu()
        _sync(device)
    return clock


def time_segment(fn, tiles: list[np.ndarray]) -> Clock:
    """Time ``fn.segment_batch`` over ``tiles`` handed over ``fn.batch_size`` at a time."""
    with Clock() as clock:
        for first in range(0, len(tiles), fn.batch_size):
            fn.segment_batch(tiles[first : first + fn.batch_size])
    return clock


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(
    tiles: int = 32,
    tile_size: int = 256,
    batch_sizes=(1, 4, 8),
    width: int = 16,
    device: str = "cpu",
    repeats: int = 3,
    threads: int | str = "auto",
) -> list[dict]:
    """Benchmark every batch size; one result dict per batch size (best of ``repeats``).

    ``threads`` is the torch_fn ``num_threads`` option ("auto" = all cores for one worker).
    """
    torch.manual_seed(0)
    net = BenchUNet(width=width).eval()
    data = make_tiles(tiles, tile_size)
    results = []
    for batch_size in batch_sizes:
        fn = torch_fn(
            net,
            device=device,
            batch_size=batch_size,
            output="semantic",
            pad_multiple=16,
            num_threads=threads,
        )
        for _ in range(2):  # warm-up: load, configure threads, create kernels for this shape
            fn.segment_batch(data[:batch_size])
        model, resolved = fn._model()
        forward = min(
            (time_forward(model, data, batch_size, resolved) for _ in range(repeats)),
            key=lambda clock: clock.wall,
        )
        segment = min((time_segment(fn, data) for _ in range(repeats)), key=lambda c: c.wall)
        results.append(
            {
                "batch_size": batch_size,
                "device": resolved,
                "tiles": tiles,
                "tile_size": tile_size,
                "threads": torch.get_num_threads(),
                "forward_tiles_per_s": tiles / forward.wall,
                "segment_tiles_per_s": tiles / segment.wall,
                "segment_cpu_s_per_tile": segment.cpu / tiles,
            }
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=32, help="tiles per measurement (default 32)")
    parser.add_argument(
        "--tile-size", type=int, default=256, help="tile side in pixels (default 256)"
    )
    parser.add_argument("--batch-sizes", default="1,4,8", help="comma-separated (default 1,4,8)")
    parser.add_argument("--width", type=int, default=16, help="U-Net base channels (default 16)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (default 3)")
    parser.add_argument("--threads", default="auto", help="torch threads: auto (all cores) or N")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    results = run(
        args.tiles,
        args.tile_size,
        tuple(int(b) for b in args.batch_sizes.split(",")),
        args.width,
        args.device,
        args.repeats,
        args.threads if args.threads == "auto" else int(args.threads),
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"torch {torch.__version__} on {platform.processor() or platform.machine()}, "
        f"{results[0]['threads']} threads, device {results[0]['device']}, "
        f"{args.tiles} tiles of {args.tile_size}x{args.tile_size}, U-Net width {args.width}"
    )
    print(f"{'batch':>5} {'forward tiles/s':>16} {'segment tiles/s':>16} {'CPU s/tile':>11}")
    for row in results:
        print(
            f"{row['batch_size']:>5} {row['forward_tiles_per_s']:>16.2f} "
            f"{row['segment_tiles_per_s']:>16.2f} {row['segment_cpu_s_per_tile']:>11.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
