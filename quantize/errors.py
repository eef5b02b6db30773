"""The CLI's error boundary: bad input is one line on stderr and exit code 2, never a traceback.

Every command is wrapped by `handles_errors`, and the app is built on `CommandGroup`, so that
  - our own errors (ValueError and its subclasses, missing files) print `error: <one line>`, exit 2;
  - OS errors while reading or writing (disk full, permission denied) print one line too, exit 2;
  - option parsing errors from click (`--bits abc`, an unknown option) are one line, exit 2;
  - SIGTERM stops a run like SIGINT does: the exception unwinds through `destination.atomic_directory`,
    which removes its temporary folder, so neither signal leaves a partial checkpoint (a streamed
    `qtool quantize` keeps its finished blocks in `.NAME.partial` for --resume, and says so);
  - warnings are one `warning:` line each, without Python's source-line echo;
  - anything else is a bug: one line naming the exception type, exit 1.
QTOOL_DEBUG=1 re-raises instead, to show the traceback.
"""

from __future__ import annotations

import errno
import functools
import importlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from typer.core import TyperGroup

# typer 0.29 vendors its own copy of click; earlier releases use click itself. Catch the exceptions
# of whichever click the app's commands are built on (the package that defines TyperGroup's base).
_click = importlib.import_module(TyperGroup.__mro__[1].__module__.rpartition(".")[0] + ".exceptions")

EXIT_BAD_INPUT = 2
EXIT_BUG = 1

_OS_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT raises KeyboardInterrupt, so the same cleanup runs."""


def _echo_error(message: str) -> None:
    # click.echo, not a rich console: rich would wrap a long path over several lines.
    typer.echo(f"error: {message}", err=True)


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def describe_os_error(err: OSError) -> str:
    """One line for an OS error: what went wrong and on which file, without errno noise."""
    what = _OS_ERRORS.get(err.errno, err.strerror or first_line(err))
    where = err.filename if err.filename is not None else None
    return f"{what}: {where}" if where else what


class _OneLineUsageError(_click.ClickException):
    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, command: str | None) -> None:
        super().__init__(message)
        self.command = command

    def show(self, file=None) -> None:
        hint = f" (see `{self.command} --help`)" if self.command else ""
        _echo_error(f"{self.format_message()}{hint}")


@contextmanager
def _one_line_usage() -> Iterator[None]:
    try:
        yield
    except _click.UsageError as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # `qtool` alone prints the help, as asked
            raise
        raise _OneLineUsageError(err.format_message(), err.ctx.command_path if err.ctx else None) from None


class CommandGroup(TyperGroup):
    """The app's click group: option parsing errors are one line, like every other bad input."""

    def make_context(self, *args, **kwargs):
        with _one_line_usage():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _one_line_usage():
            return super().invoke(ctx)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    typer.echo(f"warning: {message}", err=True)


_received: list[int] = []  # the signals handled inside signals_as_interrupts, newest last


def check_interrupted() -> None:
    """Raise again for a SIGINT / SIGTERM already handled in this command. A handler's exception is lost
    where it lands in code that swallows exceptions (a finalizer, a library's `except BaseException`);
    waits that could outlast the signal (quantize.writer's) call this, so the run still stops."""
    if _received:
        raise Terminated if _received[-1] == signal.SIGTERM else KeyboardInterrupt


@contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread, SIGINT
    KeyboardInterrupt (unless it is ignored, as in a background job), and both are recorded for
    check_interrupted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        _received.append(signum)
        raise Terminated

    def interrupt(signum, frame):
        _received.append(signum)
        raise KeyboardInterrupt

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, terminate)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received.clear()


def _exit_for(err: BaseException) -> int:
    """Print one line for `err` and return the exit code."""
    if isinstance(err, Terminated):  # a message of its own says where a resumable partial run was kept
        _echo_error(first_line(err) if str(err) else "terminated (SIGTERM); no partial output was left")
        return 128 + signal.SIGTERM
    if isinstance(err, KeyboardInterrupt):
        _echo_error(first_line(err) if str(err) else "interrupted; no partial output was left")
        return 128 + signal.SIGINT
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError | NotADirectoryError):
        _echo_error(describe_os_error(err))
        return EXIT_BAD_INPUT
    if isinstance(err, ValueError | KeyError | FileNotFoundError | NotADirectoryError):
        _echo_error(first_line(err) if str(err) else type(err).__name__)
        return EXIT_BAD_INPUT
    _echo_error(f"internal error ({type(err).__name__}: {first_line(err)}); "
                "QTOOL_DEBUG=1 shows the traceback")
    return EXIT_BUG


def handles_errors(fn: Callable) -> Callable:
    """Wrap a command in the error boundary described in this module's docstring."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                with signals_as_interrupts():
                    return fn(*args, **kwargs)
            except (typer.Exit, _click.ClickException, typer.Abort):
                raise
            except (Exception, KeyboardInterrupt) as err:
                if os.environ.get("QTOOL_DEBUG"):
                    raise
                code = _exit_for(err)
        sys.stderr.flush()
        raise typer.Exit(code)

    return wrapper


def fail(message: str) -> None:
    """Stop a command with one line and exit code 2."""
    _echo_error(message)
    raise typer.Exit(EXIT_BAD_INPUT)
