"""The cases of issue 16 that need more than one bad command line: signals, disk full, file modes,
checks made before any work, reports of RTN checkpoints, GPTQ's notes, 80-column help, transformers hooks."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from broken import leftovers, text_file
from safetensors import SafetensorError
from typer.testing import CliRunner

from quantize.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def run(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


# --- signals: SIGTERM like SIGINT; what SIGKILL leaves is removed by the next run ------------------

SLOW_WRITE = """
import faulthandler, signal, sys, time
faulthandler.register(signal.SIGUSR1, all_threads=True)  # _communicate's stacks of a run that did not stop
import quantize.checkpoint as checkpoint
import quantize.writer as writer

real = checkpoint.save_file

def slow(tensors, path, metadata=None):
    real(tensors, path, metadata=metadata)
    print("WRITING", flush=True)
    time.sleep(600)

checkpoint.save_file = slow
writer.save_file = slow  # the streamed path (quantize/writer.py): its partial directory is for --resume
from quantize.cli import app
sys.argv = ["qtool", *sys.argv[1:]]
app()
"""


def _start_slow_write(tmp_path: Path, model: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # SIGINT at its default in the child, as in a terminal: a test runner started in the background by a
    # non-interactive shell ignores SIGINT, and the child (Python included) would inherit that.
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, "quantize", str(model), "--output", str(out),
                             "--group-size", "32", *extra], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    watchdog = threading.Timer(300, proc.kill)  # a run that never gets to writing fails the test, not CI's clock
    watchdog.start()
    try:
        for line in proc.stdout:  # wait until the checkpoint is half written
            if line.startswith("WRITING"):
                return proc
    finally:
        watchdog.cancel()
    proc.wait()
    pytest.fail(f"the run ended before writing (exit {proc.returncode}): {proc.stderr.read()[-2000:]}")


def _communicate(proc: subprocess.Popen, timeout: float = 60) -> str:
    """The stopped run's stderr; if it is still running after `timeout` s, fail with its threads' stacks."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        try:
            stderr = proc.communicate(timeout=10)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            stderr = proc.communicate()[1]
        pytest.fail(f"the run did not stop within {timeout} s of the signal; its stacks:\n{stderr[-6000:]}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("existing", [False, True])
def test_signal_during_write_leaves_nothing_partial(tiny_model_dir, tmp_path, signum, existing):
    out = tmp_path / "out"
    if existing:
        assert run("quantize", tiny_model_dir, "--output", out, "--group-size", "32").exit_code == 0
        before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = _start_slow_write(tmp_path, tiny_model_dir, out, *(["--overwrite"] if existing else []))
    assert leftovers(tmp_path) or (tmp_path / ".out.partial").is_dir()  # the folder being written exists
    proc.send_signal(signum)
    stderr = _communicate(proc)
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and len(error_lines(stderr)) == 1, stderr
    assert not leftovers(tmp_path)
    if existing:  # the previous checkpoint is untouched
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    else:
        assert not out.exists()


def test_a_lost_signal_still_ends_the_wait_for_a_write():
    """A handler's exception raised where a library swallows it must not leave the run waiting on its
    writer thread (or going on): the next wait raises it again; the cleanup's wait does not."""
    from quantize.errors import Terminated, signals_as_interrupts
    from quantize.writer import Background

    release = threading.Event()
    job = Background()
    with signals_as_interrupts():
        job.start(release.wait, 30)
        try:
            signal.raise_signal(signal.SIGTERM)
        except BaseException:  # noqa: BLE001  (a library swallowing the handler's exception)
            pass
        start = time.monotonic()
        with pytest.raises(Terminated):
            job.wait()
        assert time.monotonic() - start < 5  # not the job's 30 s
        job.wait(0.2, interruptible=False)  # the cleanup's wait: returns at its timeout, the job still running
        assert time.monotonic() - start < 5
        release.set()
        job.wait(interruptible=False)
    job.start(release.wait, 30)
    job.wait()  # outside the command: nothing recorded, the finished job's wait returns


def test_next_run_removes_what_sigkill_left(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    proc = _start_slow_write(tmp_path, tiny_model_dir, out, "--format", "compressed-tensors")  # an eager write
    proc.kill()
    _communicate(proc)
    left = leftovers(tmp_path)
    assert len(left) == 1 and not out.exists()
    res = run("quantize", tiny_model_dir, "--output", out, "--group-size", "32")
    assert res.exit_code == 0, res.output
    assert "removed 1 temporary folder(s) left by an interrupted run" in res.output
    assert not leftovers(tmp_path) and (out / "model.safetensors.index.json").is_file()  # streamed: one shard a block


def test_stale_folder_of_a_running_process_is_kept(tmp_path):
    from quantize.destination import remove_stale

    mine = tmp_path / f".out.tmp-{os.getppid()}-abc"  # the parent process is alive
    dead = tmp_path / ".out.tmp-999999999-abc"
    mine.mkdir()
    dead.mkdir()
    with pytest.warns(UserWarning, match="removed 1 temporary folder"):
        assert remove_stale(tmp_path / "out") == [dead]
    assert mine.is_dir() and not dead.exists()


def test_interrupted_replacement_restores_the_previous_output(tmp_path):
    from quantize.destination import remove_stale

    old = tmp_path / ".out.old-999999999"  # killed between moving the old output aside and renaming the new
    old.mkdir()
    (old / "config.json").write_text("{}")
    with pytest.warns(UserWarning):
        remove_stale(tmp_path / "out")
    assert (tmp_path / "out" / "config.json").is_file() and not old.exists()


# --- disk full, unwritable outputs: one line, before any work where it can be known ----------------

@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   SafetensorError("Error while serializing: IoError(Os { code: 28, kind: "
                                                   "StorageFull, message: \"No space left on device\" })")])
def test_disk_full_is_one_line(tiny_model_dir, tmp_path, monkeypatch, error):
    def full(*args, **kwargs):
        raise error

    monkeypatch.setattr("quantize.checkpoint.save_file", full)
    monkeypatch.setattr("quantize.writer.save_file", full)  # the streamed path keeps its blocks for --resume
    res = run("quantize", tiny_model_dir, "--output", tmp_path / "out", "--group-size", "32")
    assert res.exit_code == 2 and "Traceback" not in res.output
    (line,) = error_lines(res.output)
    assert line.startswith(f"error: no space left on the device to write {tmp_path / 'out'}; ")
    assert not leftovers(tmp_path) and not (tmp_path / "out").exists()


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command starts loading a model or converting a checkpoint."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the command started working before checking its output")

    for target in ("quantize.quantizer.load_model", "quantize.streaming.open_lazily",
                   "quantize.loading.export_compressed_tensors", "quantize.loading.load_checkpoint"):
        monkeypatch.setattr(target, forbidden)


def test_unwritable_output_is_refused_before_any_work(tiny_model_dir, tmp_path, monkeypatch, no_work):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # As root, mode bits do not stop writes: stand in for a read-only folder (test_read_only_folder does it for real).
    monkeypatch.setattr("quantize.destination.os.access",
                        lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    res = run("quantize", tiny_model_dir, "--output", locked / "q")
    assert res.exit_code == 2 and error_lines(res.output) == [f"error: cannot write {locked / 'q'}: {locked} "
                                                               "is not writable"]
    res = run("quantize", tiny_model_dir, "--output", tmp_path / "a" / "b")  # missing folders are fine...
    assert res.exit_code == 1 and "before checking its output" in res.output  # ...so this one got to loading


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tiny_model_dir, tmp_path, no_work):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    res = run("quantize", tiny_model_dir, "--output", locked / "q")
    assert res.exit_code == 2 and "is not writable" in res.output


def test_export_checks_its_output_before_converting(tmp_path, no_work):
    from conftest import quantized_checkpoint
    from quantize.scheme import preset

    ck = quantized_checkpoint(tmp_path / "ck", preset("w8a16"))
    (tmp_path / "x").mkdir()
    res = run("export", ck, "--output", tmp_path / "x")
    assert res.exit_code == 2 and "--overwrite" in res.output


def test_overwrite_does_not_replace_a_file(tiny_model_dir, tmp_path):
    target = tmp_path / "outfile"
    target.write_text("precious")
    res = run("quantize", tiny_model_dir, "--output", target, "--overwrite", "--group-size", "32")
    assert res.exit_code == 2 and "is an existing file" in res.output
    assert target.read_text() == "precious" and not leftovers(tmp_path)


def test_output_equal_to_model_keeps_the_model(tiny_model_dir):
    before = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir()}
    res = run("quantize", tiny_model_dir, "--output", tiny_model_dir, "--overwrite", "--group-size", "32")
    assert res.exit_code == 2 and "which this command reads" in res.output
    assert {p.name: p.read_bytes() for p in tiny_model_dir.iterdir()} == before


# --- checkpoints are as readable as the umask says -------------------------------------------------

@pytest.mark.parametrize("mask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_checkpoint_modes_follow_umask(tiny_model_dir, tmp_path, mask, dir_mode, file_mode):
    previous = os.umask(mask)
    try:
        res = run("quantize", tiny_model_dir, "--output", tmp_path / "out", "--group-size", "32")
    finally:
        os.umask(previous)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out").stat().st_mode & 0o777 == dir_mode
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()} == \
        {p.name: file_mode for p in (tmp_path / "out").iterdir()}


@pytest.mark.slow
def test_prepared_model_is_readable_by_others(smollm2_dir):
    if os.environ.get("QTOOL_SMOLLM2"):
        pytest.skip("a model prepared elsewhere, under another umask")
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in smollm2_dir.iterdir()), \
        {p.name: oct(p.stat().st_mode) for p in smollm2_dir.iterdir()}


# --- the README's own flow: report --plot on RTN; GPTQ's notes ----------------------------------------

def test_report_plot_on_rtn_checkpoint_draws_weight_error(tiny_model_dir, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "w4a16"
    assert run("quantize", tiny_model_dir, "--output", out, "--group-size", "32").exit_code == 0
    layers = json.loads((out / "layer_errors.json").read_text())["layers"]
    assert all(r["rel_error"] is None and 0 < r["method_stats"]["weight_rel_error"] < 0.5 for r in layers)
    res = run("report", out, "--plot", tmp_path / "x.png")
    assert res.exit_code == 0, res.output
    assert "relative weight error" in res.output and (tmp_path / "x.png").stat().st_size > 1000


def test_gptq_notes_are_one_line(tiny_model_dir, tmp_path):
    data = text_file(tmp_path / "text.txt")
    out = tmp_path / "gptq"
    res = run("quantize", tiny_model_dir, "--output", out, "--group-size", "32", "--method", "gptq",
              "--dataset", data, "--num-samples", "2", "--seq-len", "16")
    assert res.exit_code == 0, res.output
    notes = [line for line in res.output.splitlines() if line.startswith("note:")]
    messages = json.loads((out / "layer_errors.json").read_text())["messages"]
    assert len(messages) == 14 and all("poorly conditioned" in m for m in messages)
    assert len(notes) == 1 and notes[0].startswith("note: 14 layers like model.layers.0.")
    assert str(out / "layer_errors.json") in res.output


def test_summarize_notes_keeps_distinct_notes():
    from quantize.report import summarize_notes

    notes = ["a.q: only 64 tokens for 96 features", "b.q: only 64 tokens for 160 features", "a.k: damp 0.1"]
    assert summarize_notes(notes, "x.json") == [
        "2 layers like a.q: only 64 tokens for 96 features (each one in x.json)", "a.k: damp 0.1"]


# --- 80 columns, one-line warnings ----------------------------------------------------------------

COMMANDS = [["quantize"], ["calibrate"], ["eval"], ["inspect"], ["report"], ["export"], ["bench"],
            ["kernels", "info"], ["kernels", "build"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_fits_80_columns(command):
    import typer.main

    res = run(*command, "--help", terminal_width=80, env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    assert "…" not in res.output and "<bool>" not in res.output
    assert max(len(line) for line in res.output.splitlines()) <= 80
    group = typer.main.get_command(app)
    cmd = group.commands[command[0]]
    cmd = cmd.commands[command[1]] if len(command) > 1 else cmd
    names = [o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
    assert all(name in res.output for name in names)


def test_inspect_folds_long_layer_names(tmp_path):
    from conftest import quantized_checkpoint
    from quantize.scheme import preset

    ck = quantized_checkpoint(tmp_path / "ck", preset("w8a16"))
    res = run("inspect", ck, terminal_width=80, env={"COLUMNS": "80"})
    assert res.exit_code == 0 and "…" not in res.output


def test_kernels_info_prints_no_raw_warning(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", "from quantize.cli import app; app()", "kernels", "info"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" not in proc.stderr and "warnings.warn" not in proc.stderr and "ops = " not in proc.stderr


def test_warnings_are_one_line(capfd):
    import warnings

    from quantize.errors import handles_errors

    @handles_errors
    def command():
        warnings.warn("careful", RuntimeWarning, stacklevel=1)

    command()
    assert capfd.readouterr().err == "warning: careful\n"


def test_unexpected_exception_is_one_line_exit_1():
    import typer

    from quantize.errors import handles_errors

    @handles_errors
    def command():
        raise ZeroDivisionError("boom")

    with pytest.raises(typer.Exit) as stop:
        command()
    assert stop.value.exit_code == 1


# --- transformers: loading does not depend on which hook a release calls first ----------------------

def test_every_config_hook_drops_the_guard():
    from transformers import LlamaConfig

    from quantize.checkpoint import TRANSFORMERS_GUARD, TRANSFORMERS_GUARD_KEY
    from quantize.hf import CONFIG_HOOKS, QtoolConfig, QtoolHfQuantizer
    from quantize.scheme import QuantizationConfig

    quantizer = QtoolHfQuantizer(QtoolConfig(QuantizationConfig(groups={}, method="rtn")))
    for hook in CONFIG_HOOKS:
        config = LlamaConfig(**{TRANSFORMERS_GUARD_KEY: TRANSFORMERS_GUARD})
        assert getattr(quantizer, hook)(config) is config and not hasattr(config, TRANSFORMERS_GUARD_KEY), hook


def test_from_pretrained_refuses_a_retyped_tensor(tmp_path):
    from broken import copy_with_tensor
    from transformers import AutoModelForCausalLM

    import quantize  # noqa: F401
    from conftest import quantized_checkpoint
    from quantize.scheme import preset

    ck = quantized_checkpoint(tmp_path / "ck", preset("w4a16").with_weights(group_size=32))
    name = "model.layers.0.self_attn.q_proj.weight_packed"
    retyped = copy_with_tensor(ck, tmp_path / "retyped", name, lambda t: t.float())
    with pytest.raises(ValueError, match=f"{name} is float32 \\[96, 12\\], but the config implies int32"):
        AutoModelForCausalLM.from_pretrained(retyped)
