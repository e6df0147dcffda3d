"""Entry point of the ``torch`` segmenter (group ``blockbuster``).

Kept tiny on purpose: it must not import :mod:`torch` (or anything heavy); the
factory is named by a ``"module:attr"`` string that the core imports only when a
``torch`` segmenter is actually created.
"""

from __future__ import annotations

from blockbuster import hookimpl


@hookimpl
def register_segmenters(register):
    """Register the ``torch`` segmenter with the blockbuster registry."""
    register(
        "torch",
        "blockbuster.plugins.torch:torch_fn",
        aliases=("pytorch",),
        description=(
            "Bring your own PyTorch model (nn.Module, TorchScript, torch.export or state dict)"
        ),
    )
