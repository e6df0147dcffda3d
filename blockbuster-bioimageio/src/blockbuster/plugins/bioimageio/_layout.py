"""What a model's description says about tiling, read once in the parent as plain data.

:class:`Layout` holds the input's axes (batch, channel, space), its valid sizes
(``min + n * step`` per spatial axis), the input halo bioimageio.core derives from the
output's halo, and the kind of output. Descriptions the backend cannot tile exactly (several
inputs, time or index axes, outputs at another scale) raise
:class:`~blockbuster.errors.UnsupportedModelError` here, before any tile runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from blockbuster.errors import UnsupportedModelError

OutputKind = Literal["instances", "mask", "probability", "semantic"]
OUTPUT_KINDS = ("instances", "mask", "probability", "semantic")  # as blockbuster's Needs.output
INTEGER_TYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64")


@dataclass(frozen=True)
class Layout:
    """The tiling facts of one model (see the module docstring)."""

    name: str
    input_id: str
    input_dims: tuple[str, ...]     # axis ids in the model's order, e.g. ("batch", "c", "y", "x")
    input_axes: tuple[str, ...]     # their roles: "batch", "channel" or the space axis' id
    spatial: tuple[str, ...]        # the space axes, in order
    channels: int                   # input channels (1 without a channel axis)
    output_channels: int
    sizes: tuple[tuple[int, int], ...]  # (min, step) per spatial axis; step 0: fixed size
    halo: tuple[int, ...]           # input halo per spatial axis
    output_id: str
    output_roles: tuple[tuple[str, str], ...]  # (axis id, role) of each output axis
    kind: OutputKind

    @property
    def align(self) -> tuple[int, ...]:
        """Tile sizes and halos on this lattice keep every window a valid model input."""
        return tuple(max(1, step) for _, step in self.sizes)

    def valid_size(self, needed: tuple[int, ...]) -> tuple[int, ...]:
        """The smallest valid input size at least ``needed`` per spatial axis."""
        sizes = []
        for want, (low, step), axis in zip(needed, self.sizes, self.spatial, strict=True):
            if step == 0:
                if want > low:
                    raise UnsupportedModelError(
                        f"model {self.name!r} takes a fixed size {low} along {axis!r}, but a "
                        f"tile window plus halo needs {want}; use smaller tiles (tile_shape) "
                        f"so that a window plus {self.halo} halo fits in {low}."
                    )
                sizes.append(low)
            else:
                sizes.append(low + step * max(0, math.ceil((want - low) / step)))
        return tuple(sizes)


def read_layout(description: Any, *, output_id: str | None = None,
                output: str | None = None) -> Layout:
    """The :class:`Layout` of a bioimageio.spec model description (format 0.5)."""
    from bioimageio.spec.model import v0_5

    if not isinstance(description, v0_5.ModelDescr):
        raise UnsupportedModelError(
            f"model {description.name!r} uses format {description.format_version}; this backend "
            "reads format 0.5 descriptions. Update the package with `bioimageio update-format`."
        )
    if len(description.inputs) != 1:
        raise UnsupportedModelError(
            f"model {description.name!r} has {len(description.inputs)} inputs; this backend runs "
            "single-input models only."
        )
    tensor = description.inputs[0]
    spatial, sizes, channels = _input_axes(description.name, tensor)
    out = _output_tensor(description, output_id)
    halo = _input_halo(description, tensor.id, spatial)
    _check_same_scale(description.name, out, tensor.id, spatial)
    return Layout(
        name=str(description.name), input_id=str(tensor.id),
        input_dims=tuple(str(a.id) for a in tensor.axes),
        input_axes=tuple(_role(a) for a in tensor.axes), spatial=spatial, channels=channels,
        sizes=sizes, halo=halo, output_id=str(out.id),
        output_roles=tuple((str(a.id), _role(a)) for a in out.axes),
        output_channels=_output_channels(out),
        kind=output_kind(description.name, out, output),
    )


def _role(axis: Any) -> str:
    """``"batch"``, ``"channel"`` or, for a space axis, its id."""
    return axis.type if axis.type in ("batch", "channel") else str(axis.id)


def _input_axes(name: str, tensor: Any) -> tuple[tuple[str, ...], tuple, int]:
    from bioimageio.spec.model import v0_5

    spatial, sizes, channels = [], [], 1
    for axis in tensor.axes:
        if isinstance(axis, v0_5.BatchAxis):
            continue
        if isinstance(axis, v0_5.ChannelAxis):
            channels = len(axis.channel_names)
        elif isinstance(axis, v0_5.SpaceInputAxis):
            spatial.append(str(axis.id))
            sizes.append(_size_range(name, axis))
        else:
            raise UnsupportedModelError(
                f"model {name!r} has a {axis.type} input axis {str(axis.id)!r}; this backend "
                "tiles batch, channel and space (z, y, x) axes only."
            )
    return tuple(spatial), tuple(sizes), channels


def _size_range(name: str, axis: Any) -> tuple[int, int]:
    from bioimageio.spec.model import v0_5

    if isinstance(axis.size, int):
        return axis.size, 0
    if isinstance(axis.size, v0_5.ParameterizedSize):
        return axis.size.min, axis.size.step
    raise UnsupportedModelError(
        f"model {name!r} sizes its input axis {str(axis.id)!r} by reference to another axis; "
        "this backend tiles inputs whose spatial sizes are fixed or min + n * step."
    )


def _output_tensor(description: Any, output_id: str | None) -> Any:
    outputs = {str(t.id): t for t in description.outputs}
    if output_id is None:
        return description.outputs[0]
    if output_id not in outputs:
        raise UnsupportedModelError(
            f"model {description.name!r} has no output {output_id!r}; its outputs are "
            f"{sorted(outputs)}."
        )
    return outputs[output_id]


def _input_halo(description: Any, input_id: Any, spatial: tuple[str, ...]) -> tuple[int, ...]:
    from bioimageio.core.digest_spec import get_input_halo

    halos = get_input_halo(description).get(input_id, {})
    by_axis = {str(a): max(h.left, h.right) for a, h in halos.items()}
    return tuple(int(by_axis.get(axis, 0)) for axis in spatial)


def _check_same_scale(name: str, output: Any, input_id: Any, spatial: tuple[str, ...]) -> None:
    """Each spatial output axis must be the input axis of the same id (offset 0)."""
    from bioimageio.spec.model import v0_5

    for axis in output.axes:
        if isinstance(axis, (v0_5.BatchAxis, v0_5.ChannelAxis)):
            continue
        size = axis.size
        if not (isinstance(size, v0_5.SizeReference) and size.tensor_id == input_id
                and str(size.axis_id) == str(axis.id) and size.offset == 0
                and str(axis.id) in spatial and getattr(axis, "scale", 1.0) == 1.0):
            raise UnsupportedModelError(
                f"model {name!r}: output axis {str(axis.id)!r} is not the input's axis of the "
                "same name at the same scale; this backend tiles models whose output has the "
                "input's spatial shape."
            )


def output_kind(name: str, output: Any, requested: str | None = None) -> OutputKind:
    """What the output holds: ``requested`` if given, else read from its description.

    Integer data in one channel are instance labels, unless the last postprocessing step is
    ``binarize`` (a mask); float data in one channel are a probability; several channels are
    per-class scores (``semantic``: the class of a pixel is its highest channel, channel 0 the
    background).
    """
    if requested is not None:
        if requested not in OUTPUT_KINDS:
            raise UnsupportedModelError(
                f"output={requested!r}; use one of {', '.join(OUTPUT_KINDS)} (or leave it out "
                "to read it from the model's description)."
            )
        return requested  # type: ignore[return-value]
    steps = [str(step.id) for step in output.postprocessing]
    if steps and steps[-1] == "binarize":
        return "mask"
    channels = _output_channels(output)
    if channels > 1:
        return "semantic"
    data = output.data[0] if isinstance(output.data, (list, tuple)) else output.data
    return "instances" if str(data.type) in INTEGER_TYPES else "probability"


def _output_channels(output: Any) -> int:
    from bioimageio.spec.model import v0_5

    for axis in output.axes:
        if isinstance(axis, v0_5.ChannelAxis):
            return len(axis.channel_names)
    return 1
