"""Entry point of the ``blockbuster`` plugin group: the ``bioimageio`` segmenter and model store.

Kept tiny on purpose: plugin discovery imports this module, never bioimageio.core or torch.
"""

from blockbuster import hookimpl


@hookimpl
def register_segmenters(register):
    """Register ``bioimageio`` (alias ``bioimage.io``); the factory is imported only when used."""
    register(
        "bioimageio",
        "blockbuster.plugins.bioimageio:bioimageio_fn",
        aliases=("bioimage.io",),
        description="Any bioimage.io model zoo model (zoo id, DOI, URL or local package)",
    )


@hookimpl
def register_model_stores(register):
    """The bioimage.io packages fetched so far: ``blockbuster models`` lists them."""
    register("bioimageio", "blockbuster.plugins.bioimageio._packages",
             description="bioimage.io model packages in <bioimageio cache>/blockbuster-packages")
