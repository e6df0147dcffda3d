"""blockbuster-napari: run blockbuster's tiled segmentation from napari (the Run dock widget)
and open its output folders (labels, object table, merge-log seams) as napari layers.

Importing the package imports nothing heavy (napari reads the manifest through it); the widget
and the layer builders load on first use.
"""

__version__ = "0.2.0"
__all__ = ["RunWidget", "__version__", "output_layers"]


def __getattr__(name):
    if name == "RunWidget":
        from blockbuster_napari._widget import RunWidget

        return RunWidget
    if name == "output_layers":
        from blockbuster_napari._layers import output_layers

        return output_layers
    raise AttributeError(f"module 'blockbuster_napari' has no attribute {name!r}")
