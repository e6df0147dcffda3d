"""Entry point of the ``blockbuster`` plugin group: the ``cellpose`` segmenter and model store.

Kept tiny on purpose: plugin discovery imports this module, never cellpose or torch.
"""

from blockbuster import hookimpl


@hookimpl
def register_segmenters(register):
    """Register ``cellpose`` (alias ``cp``); the factory is imported only when used."""
    register(
        "cellpose",
        "blockbuster.plugins.cellpose:cellpose_fn",
        aliases=("cp",),
        description="Cellpose generalist cell segmentation (cellpose 3.1 or 4.x)",
    )


@hookimpl
def register_model_stores(register):
    """Cellpose's built-in models: ``blockbuster models`` lists them, ``models pull`` fetches."""
    register("cellpose", "blockbuster.plugins.cellpose._store",
             description="Cellpose built-in models in $CELLPOSE_LOCAL_MODELS_PATH")
