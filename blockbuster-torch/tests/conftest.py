"""Shared fixtures: synthetic images, a trained tiny U-Net and its saved forms."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# Make the helper module importable under any --import-mode (the monorepo root uses
# importlib mode) and in worker processes, which inherit sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torchnets  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_model_cache():
    """Each test starts with an empty per-process model cache."""
    from blockbuster.plugins.torch._loading import clear_model_cache

    clear_model_cache()
    yield
    clear_model_cache()


@pytest.fixture(scope="session")
def disks():
    """A 256x256 image of 40 separated bright disks and its true labels."""
    return torchnets.make_disks((256, 256), count=40, seed=1)


@pytest.fixture(scope="session")
def trained_unet():
    """A TinyUNet trained for a fixed 60 steps on synthetic disks (a few seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is as fast and immune to load
    try:
        return torchnets.train_unet()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def unet_files(trained_unet, tmp_path_factory):
    """The trained U-Net saved as TorchScript, torch.export program and state dict."""
    folder = tmp_path_factory.mktemp("models")
    files = {
        "torchscript": folder / "unet.pt",
        "export": folder / "unet.pt2",
        "state_dict": folder / "unet_state.pth",
    }
    torchnets.save_torchscript(trained_unet, files["torchscript"])
    torchnets.export_dynamic(trained_unet, files["export"], multiple=4)
    torch.save(trained_unet.state_dict(), files["state_dict"])
    return files
