"""pluggy registration of the ``stardist`` segmenter and model store.

This module is what the ``blockbuster`` entry point loads: it must stay tiny and must not
import TensorFlow or stardist (the factory is given as a ``"module:attr"`` string and is
imported only when a StarDist segmenter is actually created).
"""

from blockbuster import hookimpl


@hookimpl
def register_segmenters(register):
    """Register ``stardist`` (alias ``sd``) with the blockbuster segmenter registry."""
    register(
        "stardist",
        "blockbuster.plugins.stardist:stardist_fn",
        aliases=("sd",),
        description="StarDist star-convex nuclei segmentation (2D, 3D, H&E RGB)",
    )


@hookimpl
def register_model_stores(register):
    """StarDist's pretrained models: ``blockbuster models`` lists them, ``models pull`` fetches."""
    register("stardist", "blockbuster.plugins.stardist._store",
             description="StarDist pretrained models in the Keras cache ($KERAS_HOME or ~/.keras)")
