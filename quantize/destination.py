"""Where commands write: checks made before any work, and directories that appear whole or not at all.

`check_output` runs before a command loads anything, so a path that cannot be written fails in
a second instead of after a quantization. `atomic_directory` writes into a hidden temporary folder
beside the target (`.NAME.tmp-PID-XXXX`) and renames it into place only when complete. An
exception or a signal (SIGINT, and SIGTERM through quantize.errors) removes the temporary folder;
SIGKILL cannot be caught, so the next run to the same output removes what a dead process left.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class OutputError(ValueError):
    """An output path that cannot or must not be written; the message names it."""


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable_parent(path: Path) -> None:
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: {parent} is not writable")


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_output(output: str | Path, *, overwrite: bool = False, reads: Iterable[str | Path | None] = ()) -> None:
    """Refuse, before any work, an output directory that cannot or must not be written.

    reads: what the command reads (the model, a checkpoint); the output may not be one of them,
    nor lie inside one or contain one (--overwrite would replace the model being read).
    """
    output = Path(output)
    target = output.resolve()
    for source in reads:
        if source is not None and Path(source).exists() and _overlaps(target, Path(source).resolve()):
            raise OutputError(f"--output {output} overlaps {source}, which this command reads; "
                              "write the result to another folder")
    if output.exists() and not output.is_dir():
        raise OutputError(f"--output {output} is an existing file, not a folder; remove it or choose another path")
    if output.exists() and not overwrite:
        raise OutputError(f"output directory exists: {output} (pass --overwrite to replace it)")
    _check_writable_parent(output)
    if output.exists() and not os.access(output, os.W_OK | os.X_OK):
        raise OutputError(f"cannot replace {output}: it is not writable")


def check_output_file(path: str | Path | None, option: str) -> None:
    """Refuse, before any work, a file output (--json, --plot) that cannot be written."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; give a file name")
    _check_writable_parent(path)
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{option} {path} is not writable")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(root: Path) -> None:
    """Give `root` and everything in it the modes a plain mkdir/open would (mkdtemp makes 0700)."""
    mask = _umask()
    for path in [root, *root.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _owner_alive(name: str) -> bool:
    """Whether the process that made a temporary folder `.NAME.tmp-PID-XXXX` or `.NAME.old-PID` runs."""
    pid_text = name.rsplit(".tmp-", 1)[-1].split("-")[0] if ".tmp-" in name else name.rsplit(".old-", 1)[-1]
    if not pid_text.isdigit():
        return False  # written before folders carried the writer's pid
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(out_dir: Path) -> list[Path]:
    """Remove temporary folders that a killed run to `out_dir` left behind; returns them.

    A `.NAME.old-PID` folder is the previous output moved aside during a replacement: if the run
    died before the new one took its place, it is moved back instead of removed.
    """
    if not out_dir.parent.is_dir():
        return []
    stale = [p for p in out_dir.parent.glob(f".{out_dir.name}.*")
             if p.name.startswith((f".{out_dir.name}.tmp-", f".{out_dir.name}.old-")) and not _owner_alive(p.name)]
    for path in stale:
        if ".old-" in path.name and not out_dir.exists():
            path.rename(out_dir)
        else:
            shutil.rmtree(path, ignore_errors=True)
    if stale:
        warnings.warn(f"removed {len(stale)} temporary folder(s) left by an interrupted run: "
                      f"{', '.join(p.name for p in stale)}", stacklevel=2)
    return stale


def is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    # safetensors reports I/O errors from Rust as its own exception with the OS message inside.
    return "No space left on device" in str(err) or "StorageFull" in str(err)


def publish(tmp: Path, out_dir: Path) -> None:
    """Rename the finished directory `tmp` to `out_dir`, replacing what is there (modes by the umask)."""
    apply_umask(tmp)
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
        try:
            tmp.rename(out_dir)
        except BaseException:  # a signal between the two renames: put the previous output back
            old.rename(out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)


@contextmanager
def atomic_directory(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `out_dir` that replaces it only if the block succeeds."""
    out_dir = Path(out_dir)
    remove_stale(out_dir)
    check_output(out_dir, overwrite=overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent))
    try:
        yield tmp
        publish(tmp, out_dir)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Exception) and is_disk_full(err):
            raise OutputError(f"no space left on the device to write {out_dir}; nothing was written") from None
        raise
