"""What a third-party plugin author and a CLI user run into: named plugin errors, factory errors
as one-line messages, keep_going's list of failed tiles, deterministic contract violations not
retried, overwrite clearing another job's stage, the ``plugins`` listing, and the main guard of
the processes executor."""

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import tomllib
import zarr

from blockbuster import hookimpl, tile_process
from blockbuster.builtin.executors import check_main_guard
from blockbuster.cli import main
from blockbuster.errors import (
    BackendBlockedError,
    BackendBrokenError,
    ContractViolationError,
    InvalidParameterError,
    MissingMainGuardError,
    StageMismatchError,
    TileFunctionError,
    UnknownBackendError,
)
from blockbuster.registry import Registry

ROOT = Path(__file__).resolve().parents[2]


class FailingEntryPoint:
    """An installed distribution ``blockbuster-blur`` whose entry point ``blur_plugin`` breaks."""

    name = "blur_plugin"
    group = "blockbuster"
    dist = types.SimpleNamespace(name="blockbuster-blur", version="0.1.0")

    def load(self):
        raise ModuleNotFoundError("No module named 'scipy_magic'")


@pytest.fixture
def failing_entry_point(monkeypatch):
    import importlib_metadata

    monkeypatch.setattr(importlib_metadata, "entry_points", lambda group: [FailingEntryPoint()])


# -- which plugin, and why ----------------------------------------------------------------------
def test_a_plugin_that_fails_to_import_is_named_with_its_error(failing_entry_point):
    with pytest.raises(BackendBrokenError) as error:
        Registry(autoload=True).get("segmenter", "blur")
    assert str(error.value) == (
        "segmenter 'blur': its plugin 'blur_plugin' (blockbuster-blur 0.1.0) is installed but "
        "failed to import: ModuleNotFoundError: No module named 'scipy_magic'. Fix or reinstall "
        "that package (`blockbuster plugins` shows every failure)."
    )


def test_an_unknown_name_mentions_plugins_that_failed_to_import(failing_entry_point):
    with pytest.raises(UnknownBackendError) as error:
        Registry(autoload=True).get("segmenter", "watershedd")
    message = str(error.value)
    assert "Did you mean 'watershed'?" in message
    assert "Installed segmenters: threshold, watershed." in message
    assert ("Plugins that may provide it: 'blur_plugin' failed to import "
            "(ModuleNotFoundError: No module named 'scipy_magic').") in message


def test_a_blocked_plugin_says_it_is_blocked_and_how_to_unblock(failing_entry_point):
    registry = Registry(autoload=True, block=["blockbuster-blur"])
    with pytest.raises(BackendBlockedError) as error:
        registry.get("segmenter", "blur")
    assert str(error.value) == (
        "segmenter 'blur': its plugin 'blur_plugin' (blockbuster-blur) is installed but blocked "
        "as 'blockbuster-blur'; remove that name from `[plugins] block` in the config (or from "
        "`block=`) to use it."
    )


def test_disabled_autoload_is_named_when_a_backend_is_missing():
    with pytest.raises(UnknownBackendError, match="BLOCKBUSTER_DISABLE_PLUGIN_AUTOLOAD is set"):
        Registry(autoload=False).get("segmenter", "blur")


# -- factory errors -------------------------------------------------------------------------------
class Blur:
    def __init__(self, sigma: float = 1.0):
        if sigma <= 0:
            raise ValueError("sigma must be > 0")
        self.sigma = sigma

    def __call__(self, tile):
        return (tile > 0.5).astype(np.int32)


class BlurPlugin:
    @hookimpl
    def register_segmenters(self, register):
        register("blur", Blur, aliases=("smooth",), description="blur, then label\nmore text")


def test_a_factory_value_error_names_the_backend_and_option():
    registry = Registry(autoload=False, plugins=[BlurPlugin()])
    with pytest.raises(InvalidParameterError) as error:
        registry.segmenter("blur", sigma=-1.0)
    assert str(error.value).startswith(
        "segmenter 'blur' (plugin "
    ) and str(error.value).endswith(
        "rejected option sigma=-1.0: sigma must be > 0. Change that value in the config or call."
    )
    assert isinstance(error.value.__cause__, ValueError)


@pytest.fixture
def blur_builtin(monkeypatch):
    """Register ``BlurPlugin`` for the duration of a test, also for the CLI's own registry."""
    import blockbuster.registry as registry_module

    module = types.ModuleType("blockbuster_test_blur")
    module.register_segmenters = BlurPlugin.register_segmenters.__get__(BlurPlugin())
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(registry_module, "BUILTIN_PLUGINS",
                        registry_module.BUILTIN_PLUGINS + (module.__name__,))


def write_job(tmp_path, segmenter: str, **output) -> Path:
    image = (np.indices((128, 128)).sum(0) % 9 > 4).astype(np.float32)
    zarr.create_array(store=str(tmp_path / "image.zarr"), data=image, chunks=(32, 32))
    extra = "".join(f"{k} = {v}\n" for k, v in output.items())
    path = tmp_path / "job.toml"
    path.write_text(textwrap.dedent(f"""\
        [input]
        path = "image.zarr"
        [segmenter]
        {segmenter}
        [tiling]
        tile_shape = [32, 32]
        [executor]
        name = "serial"
        [output]
        path = "labels.zarr"
        {extra}"""))
    return path


def test_the_cli_prints_a_factory_error_as_one_line(tmp_path, blur_builtin, capsys):
    config = write_job(tmp_path, 'name = "blur"\nsigma = -2.0')
    assert main(["run", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "segmenter 'blur'" in err and "rejected option sigma=-2.0: sigma must be > 0" in err


def test_plugins_lists_aliases_and_a_one_line_description(blur_builtin, capsys):
    assert main(["plugins"]) == 0
    text = capsys.readouterr().out
    assert "segmenter blur (aliases: smooth) - blur, then label\n" in text
    assert main(["plugins"]) == 0 and capsys.readouterr().out == text  # stable


# -- keep_going, retries and the stage ----------------------------------------------------------
class Exploding:
    def __call__(self, tile):
        raise RuntimeError("model diverged")


class ExplodingPlugin:
    @hookimpl
    def register_segmenters(self, register):
        register("exploding", Exploding)


def test_keep_going_on_the_cli_lists_the_failed_tiles_shortened(tmp_path, monkeypatch, capsys):
    import blockbuster.registry as registry_module

    module = types.ModuleType("blockbuster_test_exploding")
    module.register_segmenters = ExplodingPlugin.register_segmenters.__get__(ExplodingPlugin())
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(registry_module, "BUILTIN_PLUGINS",
                        registry_module.BUILTIN_PLUGINS + (module.__name__,))
    config = write_job(tmp_path, 'name = "exploding"')
    config.write_text(config.read_text() + "[run]\nkeep_going = true\nretries = 0\n")
    assert main(["run", str(config)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("blockbuster: error: 16 of 16 tiles failed")
    assert lines[0].endswith("resumes with just these:")
    assert lines[1] == ("  tile 0 at [0:32, 0:32]: fn raised RuntimeError: model diverged on "
                        "tile 0 at [0:32, 0:32]; fix the function or the input there.")
    assert [line.split()[1] for line in lines[1:11]] == [str(i) for i in range(10)]
    assert lines[11:] == ["  ... and 6 more"]


class ShortBatch:
    """Returns one result too few for each batch: a contract violation, the same on every
    try."""

    batch_size = 2

    def __init__(self, calls: Path):
        self.calls = calls

    def __call__(self, tile):
        return self.segment_batch([tile])[0]

    def segment_batch(self, tiles):
        self.calls.write_text(self.calls.read_text() + "x")
        return [np.ones(tiles[0].shape, np.int32)] * (len(tiles) - 1)


def test_a_contract_violation_is_not_retried(tmp_path):
    calls = tmp_path / "calls"
    calls.write_text("")
    with pytest.raises(ContractViolationError, match="segment_batch returned 0 results for 1"):
        tile_process(np.zeros((32, 64)), ShortBatch(calls), tile_shape=(32, 32),
                     executor="serial", retries=2)
    assert calls.read_text() == "x"
    assert issubclass(ContractViolationError, TileFunctionError)


def failing(tile):
    raise RuntimeError("crash")


def test_overwrite_clears_a_stage_left_by_another_job(tmp_path):
    image = (np.indices((64, 64)).sum(0) % 5 > 2)
    out = tmp_path / "labels.zarr"
    with pytest.raises(TileFunctionError):
        tile_process(image, failing, tile_shape=(32, 32), write_to=out, executor="serial",
                     retries=0)
    assert Path(f"{out}.stage").exists()
    other = lambda tile: tile.astype(np.int32)  # noqa: E731 - another job
    with pytest.raises(StageMismatchError, match="pass overwrite=True"):
        tile_process(image, other, tile_shape=(32, 32), write_to=out, executor="serial")
    labels = tile_process(image, other, tile_shape=(32, 32), write_to=out, executor="serial",
                          overwrite=True, compute=True)
    assert labels.shape == (64, 64) and labels.max() > 0
    assert not Path(f"{out}.stage").exists()


# -- the processes executor and the main guard --------------------------------------------------
SCRIPT = """\
import numpy as np
from blockbuster import tile_process

print("TOP LEVEL RAN", flush=True)


def run():
    image = np.indices((64, 64)).sum(0) % 7 > 3
    labels = tile_process(image, lambda t: t.astype(np.int32), tile_shape=(32, 32),
                          executor="processes", workers=2, compute=True)
    print("labels", labels.max(), flush=True)


{call}
"""


def run_script(tmp_path, call: str) -> subprocess.CompletedProcess:
    path = tmp_path / "segment.py"
    path.write_text(SCRIPT.format(call=call))
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)


def test_a_script_without_the_main_guard_gets_the_typed_error_once(tmp_path):
    done = run_script(tmp_path, "run()")
    assert done.returncode == 1
    assert done.stdout == "TOP LEVEL RAN\n"  # no worker reran the script
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("blockbuster.errors.MissingMainGuardError: executor='processes' was "
                           f"started from the top level of {tmp_path / 'segment.py'} without")
    assert "Move the call under that guard" in last


def test_a_guarded_script_runs_with_processes(tmp_path):
    done = run_script(tmp_path, 'if __name__ == "__main__":\n    run()')
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("TOP LEVEL RAN\n") and "labels " in done.stdout


def test_a_worker_importing_the_script_refuses_too():
    code = compile("check_main_guard()", "/no/such/segment.py", "exec")
    with pytest.raises(MissingMainGuardError, match="/no/such/segment.py"):
        exec(code, {"__name__": "__mp_main__", "check_main_guard": check_main_guard})


# -- packaging and README -------------------------------------------------------------------------
def test_the_testing_helpers_come_with_an_extra():
    project = tomllib.loads((ROOT / "blockbuster-core" / "pyproject.toml").read_text())["project"]
    assert any(r.startswith("pytest") for r in project["optional-dependencies"]["testing"])


def test_readme_starts_with_title_sentence_then_the_two_commands():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert lines[0] == "# blockbuster"
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in first_block.splitlines()] == [
        ["make", "example"], ["make", "test"]]
    assert text.index("Tiled processing") < text.index("```bash")


def test_a_factory_error_naming_no_option_says_the_backend_could_not_be_created():
    class Picky:
        def __init__(self, level: int = 0):
            raise TypeError("unsupported platform")

    class Plugin:
        @hookimpl
        def register_segmenters(self, register):
            register("picky", Picky)

    registry = Registry(autoload=False, plugins=[Plugin()])
    with pytest.raises(InvalidParameterError) as error:
        registry.segmenter("picky", level=2)
    assert str(error.value).endswith(
        "could not be created with level=2: TypeError: unsupported platform.")


def dies(tile):
    import os

    os._exit(3)


def test_a_worker_that_dies_is_a_worker_crashed_error():
    from blockbuster.errors import WorkerCrashedError

    with pytest.raises(WorkerCrashedError, match="a worker process died") as error:
        tile_process(np.ones((32, 64)), dies, tile_shape=(32, 32), executor="processes",
                     workers=2)
    assert not isinstance(error.value, MissingMainGuardError)


@pytest.mark.parametrize("guard, guarded", [
    ('if __name__ == "__main__":', True),
    ("if '__main__' == __name__:", True),
    ('if __name__ == "__main__" and len(sys.argv) > 0:', True),
    ('if __name__ != "worker":', False),
    ("if True:", False),
])
def test_the_main_guard_is_recognised_in_its_usual_spellings(tmp_path, guard, guarded):
    from blockbuster.builtin.executors import _inside_main_guard

    script = tmp_path / "job.py"
    script.write_text(f"import sys\n{guard}\n    run()\n")
    assert _inside_main_guard(str(script), 3) is guarded
    assert _inside_main_guard(str(script), 1) is False
