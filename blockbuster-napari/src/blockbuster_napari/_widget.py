"""The Run dock widget: pick an input, a segmenter by name and its options, the tiling, where
the labels go; run in a worker thread with a progress bar; see the labels appear.

Everything it runs is :func:`blockbuster.tile_process` (:mod:`blockbuster_napari._run`); the
layers it adds are those the reader contribution gives for the written folder
(:mod:`blockbuster_napari._layers`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from qtpy.QtCore import QObject, Signal

from blockbuster.errors import BlockbusterError, InvalidParameterError, RunCancelledError
from blockbuster.progress import ProgressEvent
from blockbuster_napari._form import OptionsForm
from blockbuster_napari._layers import output_layers
from blockbuster_napari._run import RunRequest, parse_shape, run, shape_text, suggest_tiling

if TYPE_CHECKING:
    import napari

AUTO = "auto"
READER_SKIP = ("path", "array", "source", "storage_options")
DEFAULT_SEGMENTER = "watershed"


class _Relay(QObject):
    """Carries progress events from the run's thread to the widget's (a queued Qt signal)."""

    event = Signal(str, int, int)


def one_line(error: BaseException) -> str:
    """The first line of an error's message (blockbuster's messages say the fix there)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class RunWidget(Container):
    """Segment an image layer or a file tile by tile with a registered segmenter."""

    def __init__(self, viewer: napari.viewer.Viewer, registry=None):
        super().__init__(scrollable=True)
        from blockbuster.registry import Registry

        self.viewer = viewer
        self.registry = registry if registry is not None else Registry()
        self.worker = None
        self.stats = None  # the last finished run's RunStats
        self._cancel = threading.Event()
        self._relay = _Relay()
        self._relay.event.connect(self._show_progress)
        self._build()
        self._connect()
        self._layers_changed()
        self._suggest_tiling()

    # -- building ---------------------------------------------------------------------------
    def _build(self) -> None:
        r = self.registry
        self.layer = ComboBox(label="image layer", choices=self._image_layers, nullable=True)
        self.path = LineEdit(label="or file / URL", tooltip="any image an installed reader "
                             "opens (zarr, OME-Zarr, TIFF, bioio formats); wins over the layer")
        readers = [AUTO, *(n for n in r.names("reader") if n != "array")]
        self.reader = ComboBox(label="reader", choices=readers, value=AUTO)
        self.reader_options = OptionsForm(label="reader options")
        self.about = Label(label="image", value="")
        segmenters = r.names("segmenter")
        self.segmenter = ComboBox(label="segmenter", choices=segmenters,
                                  value=DEFAULT_SEGMENTER if DEFAULT_SEGMENTER in segmenters
                                  else segmenters[0])
        self.segmenter_options = OptionsForm(label="segmenter options")
        self.tile_shape = LineEdit(label="tile shape", tooltip="per spatial axis, e.g. 1, 1024, "
                                   "1024; empty: the input's chunks or what fits in memory")
        self.overlap = LineEdit(label="overlap", tooltip="halo per side, one value or one per "
                                "axis; empty: what the segmenter asks for")
        self.executor = ComboBox(label="executor", choices=r.names("executor"), value="threads")
        self.workers = SpinBox(label="workers", value=0, min=0, max=1024,
                               tooltip="0: one per core (or per GPU)")
        self.output = FileEdit(label="output", mode="w", filter="*.zarr",
                               tooltip="the labels zarr (or OME-Zarr) to write")
        self.writer = ComboBox(label="writer", choices=r.names("writer"), value="zarr")
        self.table = CheckBox(label="object table", value=True)
        self.merge_log = CheckBox(label="merge log (seams layer)", value=False)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="status", value="")
        self.extend([self.layer, self.path, self.reader, self.reader_options, self.about,
                     self.segmenter, self.segmenter_options, self.tile_shape, self.overlap,
                     self.executor, self.workers, self.output, self.writer, self.table,
                     self.merge_log, self.run_button, self.cancel_button, self.progress,
                     self.status])
        self._rebuild_segmenter_options()

    def _connect(self) -> None:
        self.viewer.layers.events.inserted.connect(self._layers_changed)
        self.viewer.layers.events.removed.connect(self._layers_changed)
        self.layer.changed.connect(self._input_changed)
        self.path.changed.connect(self._input_changed)
        self.reader.changed.connect(self._input_changed)
        self.segmenter.changed.connect(self._segmenter_changed)
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)

    def _image_layers(self, *_) -> list:
        import napari.layers

        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, napari.layers.Image)]

    def _layers_changed(self, *_) -> None:
        self.layer.reset_choices()
        layers = [layer for _, layer in self._image_layers()]
        if self.layer.value is None and layers:
            self.layer.value = layers[-1]  # the newest image, as napari selects it

    def _input_changed(self, *_) -> None:
        self._rebuild_reader_options()
        self._suggest_tiling()

    def _segmenter_changed(self, *_) -> None:
        self._rebuild_segmenter_options()
        self._suggest_tiling()

    def _rebuild_segmenter_options(self) -> None:
        factory = self._factory("segmenter", self.segmenter.value)
        self._replace_form("segmenter_options", OptionsForm(factory, label="segmenter options"))
        self.segmenter_options.changed.connect(self._suggest_tiling)  # the halo may follow

    def _rebuild_reader_options(self) -> None:
        name = self._reader_name()
        factory = self._factory("reader", name) if name else None
        self._replace_form("reader_options", OptionsForm(factory, skip=READER_SKIP,
                                                         label="reader options"))
        self.about.value = self._describe_input()

    def _replace_form(self, attribute: str, form: OptionsForm) -> None:
        old = getattr(self, attribute)
        index = self.index(old)
        self.remove(old)
        self.insert(index, form)
        setattr(self, attribute, form)

    def _factory(self, kind: str, name: str):
        try:
            return self.registry.get(kind, name).load()
        except BlockbusterError as error:
            self.status.value = one_line(error)
            return None

    def _reader_name(self) -> str | None:
        """The reader chosen, or the one that would be picked for the path (none for a layer)."""
        if not self.path.value.strip():
            return None
        if self.reader.value != AUTO:
            return self.reader.value
        return self.registry.pm.hook.pick_reader(source=self.path.value.strip())

    def _describe_input(self) -> str:
        """Shape, axes and the reader's own listing (scenes, channels, levels) of the path."""
        from blockbuster.readers import describe

        if not self.path.value.strip():
            return ""
        try:
            reader = self.registry.open_image(self.path.value.strip(), reader=self._reader())
        except BlockbusterError as error:
            return one_line(error)
        axes = "".join(reader.axes) if reader.axes else "?"
        lines = [f"{tuple(reader.shape)} {axes} {reader.dtype}"]
        lines += [f"{label}: {text}" for label, text in describe(reader).items()]
        return "\n".join(lines)

    def _reader(self) -> str | None:
        return None if self.reader.value == AUTO else self.reader.value

    # -- the run ----------------------------------------------------------------------------
    def _input(self) -> tuple[Any, Any]:
        """The image to segment (a path, or the layer's data) and the layer, if one."""
        if self.path.value.strip():
            return self.path.value.strip(), None
        layer = self.layer.value
        if layer is None:
            raise InvalidParameterError("choose an image layer or give a file / URL to segment.")
        data = layer.data[0] if layer.multiscale else layer.data
        return data, layer

    def _suggest_tiling(self) -> None:
        """Fill tile shape and overlap with what the run would pick (the segmenter's Needs and
        the memory budget), for the user to change."""
        try:
            image, _ = self._input()
            tiles, halo = suggest_tiling(
                image, self.segmenter.value, self.segmenter_options.options(),
                reader=self._reader() if isinstance(image, str) else None,
                reader_options=self.reader_options.options() if isinstance(image, str) else None,
                workers=self.workers.value or None, registry=self.registry)
        except Exception:  # an incomplete form: leave the fields as they are
            return
        self.tile_shape.value = shape_text(tiles)
        self.overlap.value = shape_text(halo)

    def request(self) -> RunRequest:
        """The run the form describes (raises ``InvalidParameterError`` for what it cannot be)."""
        image, _ = self._input()
        if not str(self.output.value) or str(self.output.value) in (".", ""):
            raise InvalidParameterError("choose an output path for the labels (a .zarr folder).")
        from_path = isinstance(image, str)
        return RunRequest(
            image=image, segmenter=self.segmenter.value, write_to=Path(self.output.value),
            segmenter_options=self.segmenter_options.options(),
            reader=self._reader() if from_path else None,
            reader_options=self.reader_options.options() if from_path else {},
            tile_shape=parse_shape(self.tile_shape.value, "tile shape"),
            overlap=parse_shape(self.overlap.value, "overlap"),
            executor=self.executor.value, workers=self.workers.value or None,
            writer=self.writer.value, table=self.table.value, merge_log=self.merge_log.value,
            registry=self.registry)

    def start(self, *_) -> None:
        """Start the run in a worker thread (the UI stays responsive)."""
        from napari.qt.threading import create_worker

        try:
            request = self.request()
        except BlockbusterError as error:
            self._failed(error)
            return
        _, layer = self._input()
        self._cancel.clear()
        self.progress.value = 0
        self.status.value = "running"
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.worker = create_worker(run, request, progress=self._emit, cancel=self._cancel,
                                    _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(lambda stats: self._finished(request, layer, stats))
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._idle)
        self.worker.start()

    def wait(self, timeout: float = 3600.0) -> None:
        """Keep Qt's events going until the run started by :meth:`start` has ended (for
        scripts and notebooks; in napari's window the run simply goes on beside the UI)."""
        import time

        from qtpy.QtWidgets import QApplication

        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.01)

    @property
    def running(self) -> bool:
        return not self.run_button.enabled

    def _emit(self, event: ProgressEvent) -> None:  # in the run's thread
        self._relay.event.emit(event.stage, event.done, event.total)

    def cancel(self, *_) -> None:
        """Stop at the next progress event; finished tiles stay staged for the next Run."""
        self._cancel.set()
        self.status.value = "cancelling..."

    def _show_progress(self, stage: str, done: int, total: int) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = done
        self.status.value = f"{stage}: {done} of {total} tile steps"

    def _idle(self) -> None:
        self.run_button.enabled, self.cancel_button.enabled = True, False

    def _finished(self, request: RunRequest, layer, stats) -> None:
        self.stats = stats
        self.progress.value = self.progress.max
        resumed = f", {stats.tiles_resumed} resumed" if stats.tiles_resumed else ""
        self.status.value = (f"done: {stats.n_objects} objects, {stats.n_tiles} tiles{resumed} "
                             f"in {stats.seconds_total:.1f} s")
        if layer is not None and request.writer == "zarr":
            record_layer_scale(request.write_to, layer)
        for data, meta, kind in output_layers(request.write_to, name=request.labels_name):
            existing = [ly for ly in self.viewer.layers if ly.name == meta["name"]]
            for old in existing:
                self.viewer.layers.remove(old)
            getattr(self.viewer, f"add_{kind}")(data, **meta)

    def _failed(self, error: BaseException) -> None:
        from napari.utils.notifications import show_error, show_info

        if isinstance(error, RunCancelledError):
            self.status.value = "cancelled: Run again resumes"
            show_info(one_line(error))
        elif isinstance(error, BlockbusterError):
            self.status.value = one_line(error)
            show_error(one_line(error))
        else:
            from napari.utils.notifications import notification_manager

            self.status.value = f"{type(error).__name__}: {one_line(error)}"
            notification_manager.receive_error(type(error), error, error.__traceback__)


def record_layer_scale(write_to: Path, layer) -> None:
    """Record an image layer's scale and translation as the labels' physical metadata (an
    array input has none of its own), so reopening the folder places them as the run did."""
    import json

    import zarr

    node = zarr.open(store=str(write_to), mode="r+")
    info = dict(node.attrs.get("blockbuster", {}))
    source = dict(info.get("source", {}))
    ndim = len(node.shape) if hasattr(node, "shape") else layer.ndim
    source.setdefault("scale", [float(s) for s in layer.scale[-ndim:]])
    source.setdefault("translation", [float(t) for t in layer.translate[-ndim:]])
    info["source"] = source
    node.attrs["blockbuster"] = json.loads(json.dumps(info))


def make_run_widget(viewer: napari.viewer.Viewer) -> RunWidget:
    """The npe2 widget contribution."""
    return RunWidget(viewer)
