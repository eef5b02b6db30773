"""Streaming checkpoint writer: each finished block goes to its own shard in a partial directory
beside the output, with a resume state; the directory is renamed into place when complete.

Layout of the partial directory `.NAME.partial` (NAME: the output directory's name):
  block-00000.safetensors ...   one per finished decoder block (quantized linears, float rest)
  progress.json                 `ResumeState`: what the run is (fingerprint), blocks done, their reports
At the end the rest (embeddings, final norm, lm_head) is written, the shards are renamed to
model-0000i-of-0000n.safetensors with an index, config.json and tokenizer files are added, and the
directory is renamed to NAME. A crash, SIGKILL or Ctrl-C leaves the partial directory, and a run
with the same settings and `resume=True` continues after its last finished block.

A block's file is written by one background thread while the next block is quantized (on an 8B model the
writes took 3 of ~60 s, serial with the GPU work); at most one block waits to be written, so host memory
holds at most two blocks of tensors, whatever the depth.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .checkpoint import CheckpointError, write_index, write_metadata
from .destination import publish, remove_stale
from .errors import check_interrupted

STATE_NAME = "progress.json"
SETTLE_SECONDS = 10.0
POLL_SECONDS = 0.5  # how often a wait checks for a signal whose exception was lost
_META = {"format": "pt", "producer": "qtool"}


class Background:
    """One job at a time on a daemon thread; its exception is raised by the next wait.

    Waits poll an Event rather than join the thread: a signal's exception that was lost (see
    errors.check_interrupted) still ends them, and on Python 3.11 an interrupted join() marks a thread that
    is still running as stopped (bpo-45274's fix), which the next wait would take for a finished job."""

    def __init__(self) -> None:
        self._done: threading.Event | None = None
        self._error: BaseException | None = None

    def start(self, fn, *args) -> None:
        self.wait()
        done = self._done = threading.Event()

        def run() -> None:
            try:
                fn(*args)
            except BaseException as err:  # noqa: BLE001  (handed to the waiting thread)
                self._error = err
            finally:
                done.set()

        threading.Thread(target=run, name="qtool-write", daemon=True).start()

    def wait(self, timeout: float | None = None, *, interruptible: bool = True) -> None:
        """Until the job is done (at most `timeout` seconds); raises its exception. interruptible=False for
        the cleanup after a signal, which must not raise that signal again."""
        done = self._done
        if done is None:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done.wait(POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - time.monotonic())):
            if interruptible:
                check_interrupted()
            if deadline is not None and time.monotonic() >= deadline:
                return
        self._done = None
        error, self._error = self._error, None
        if error is not None:
            raise error


def partial_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(f".{out_dir.name}.partial")


def fingerprint(settings: dict[str, Any]) -> str:
    """A short hash of everything that decides the checkpoint (source, plan, data, dtypes)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class ResumeState:
    """progress.json: `done` blocks are in their shards; `layers` and `messages` are their reports."""

    fingerprint: str
    done: int = 0
    layers: list[dict[str, Any]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


class ShardWriter:
    """Writes one checkpoint block by block; see the module docstring for the layout.

    settings: what decides the checkpoint (hashed into the resume state; a resumed run must match).
    resume: continue the partial directory a previous run left; otherwise an existing partial
        directory is an error, unless `overwrite` (which also allows replacing the output).
    """

    def __init__(self, out_dir: str | Path, settings: dict[str, Any], *, resume: bool = False,
                 overwrite: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.dir = partial_dir(self.out_dir)
        remove_stale(self.out_dir)  # what a killed eager run left (.NAME.tmp-PID-*); never the partial directory
        if self.out_dir.exists() and not overwrite:
            raise CheckpointError(f"output directory exists: {self.out_dir} (pass --overwrite to replace it)")
        key = fingerprint(settings)
        self._writing = Background()
        if self.dir.exists() and resume:
            self._state = self._read_state(key)
            self._next = self._state.done
            return
        if self.dir.exists() and not overwrite:
            raise CheckpointError(f"an interrupted run left {self.dir}: pass --resume to continue it "
                                  "or --overwrite to start over")
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self._state = ResumeState(key)
        self._next = 0
        self._write_state()

    @property
    def state(self) -> ResumeState:
        """The resume state, once every block handed to write_block is on disk."""
        self.flush()
        return self._state

    def flush(self) -> None:
        """Wait for the block being written; its error (a full disk, ...) is raised here."""
        self._writing.wait()

    def settle(self) -> None:
        """After a failure elsewhere (an interrupt, an error): give the block being written SETTLE_SECONDS to
        finish, so it stays for --resume, ignoring its own error, which the failure being raised supersedes.
        A write still going is abandoned with the process (the thread is a daemon): its shard is a .tmp file
        and progress.json does not count it."""
        try:
            self._writing.wait(SETTLE_SECONDS, interruptible=False)
        except Exception:  # noqa: BLE001
            pass

    def discard(self) -> None:
        """Remove the partial directory: for bad input, which a resumed run would only meet again."""
        self.settle()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _read_state(self, key: str) -> ResumeState:
        try:
            state = ResumeState(**json.loads((self.dir / STATE_NAME).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise CheckpointError(f"cannot resume from {self.dir}: unreadable {STATE_NAME} ({err})") from None
        if state.fingerprint != key:
            raise CheckpointError(f"cannot resume from {self.dir}: it was started with other settings (model, "
                                  "method, scheme, data or dtype); pass --overwrite to start over")
        return state

    def _write_state(self) -> None:
        tmp = self.dir / f"{STATE_NAME}.tmp"
        tmp.write_text(json.dumps(asdict(self._state), indent=1))
        os.replace(tmp, self.dir / STATE_NAME)

    def _block_file(self, index: int) -> Path:
        return self.dir / f"block-{index:05d}.safetensors"

    def write_block(self, index: int, tensors: dict[str, torch.Tensor], layers: list[dict[str, Any]],
                    messages: list[str]) -> None:
        """Store block `index` (full tensor names, CPU tensors the caller no longer changes) in the background
        and mark it done once on disk; blocks come in order. The previous block's write is finished first
        (Background.start waits; its error is raised here)."""
        if index != self._next:
            raise RuntimeError(f"block {index} written after {self._next} blocks")
        self._next = index + 1
        self._writing.start(self._store, index, tensors, layers, messages)

    def _store(self, index: int, tensors: dict[str, torch.Tensor], layers: list[dict[str, Any]],
               messages: list[str]) -> None:
        """write_block's work, on the writer thread."""
        path = self._block_file(index)
        save_file(tensors, path.with_suffix(".tmp"), metadata=_META)
        os.replace(path.with_suffix(".tmp"), path)  # a kill mid-write leaves no truncated shard
        self._state.done = index + 1
        self._state.layers.extend(layers)
        self._state.messages.extend(messages)
        self._write_state()

    def read_block(self, index: int) -> dict[str, torch.Tensor]:
        self.flush()
        return load_file(self._block_file(index))

    def finish(self, rest: dict[str, torch.Tensor], config: dict[str, Any], *,
               extra_json: dict[str, Any] | None = None, source_dir: str | Path | None = None) -> Path:
        """Write the tensors outside the blocks, the index and metadata; rename into place."""
        self.flush()
        save_file(rest, self.dir / "rest.safetensors", metadata=_META)
        parts = [self._block_file(i) for i in range(self._state.done)] + [self.dir / "rest.safetensors"]
        weight_map, total = {}, 0  # names and sizes from the shards' headers, without reading the tensors
        for i, part in enumerate(parts):
            name = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
            with safe_open(part, framework="pt") as fh:
                for key in fh.keys():
                    weight_map[key] = name
                    sl = fh.get_slice(key)
                    total += _nbytes(sl.get_shape(), sl.get_dtype())
            part.rename(self.dir / name)
        write_index(self.dir, weight_map, total)
        write_metadata(self.dir, config, extra_json, source_dir)
        (self.dir / STATE_NAME).unlink()
        publish(self.dir, self.out_dir)
        return self.out_dir


_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "F16": 2, "BF16": 2,
             "I32": 4, "F32": 4, "I64": 8, "F64": 8}


def _nbytes(shape: list[int], dtype: str) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * _ITEMSIZE[dtype]
