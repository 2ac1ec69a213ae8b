"""The error boundary and quiet logging of the ``llara`` command (and of ``python -m llara.scripts.<verb>``).

A user error (bad flag, missing file, malformed input) becomes one line on stderr,
``llara <verb>: error: <what and where>``, and a non-zero exit status: 2 for usage errors, 1 otherwise.
Anything else is reported as an internal error in one line that points at ``--debug``; ``llara --debug
<verb> ...`` or ``LLARA_DEBUG=1`` shows the full traceback instead.

Logging is configured here, at the entry point, and nowhere in library code: our own loggers speak at INFO,
everything else at WARNING, and a few known library messages that say nothing useful to a user are dropped
(progress bars are untouched: they are not log records).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

DEBUG_ENV = "LLARA_DEBUG"
USAGE_EXIT = 2
ERROR_EXIT = 1
INTERRUPT_EXIT = 130
# Set when this process closed a torch.distributed process group (see exit_process).
_ran_distributed = False

# Packages whose own errors (any class defined there) are user-facing validation errors.
_OUR_PACKAGES = ("llara", "trainers", "hub_card", "modeling_llara")
_OUR_DIRS = tuple(str(Path(__file__).resolve().parent.parent / name) + os.sep for name in _OUR_PACKAGES)


class UsageError(ValueError):
    """A command line that cannot be run as given (exit status 2)."""


def debug_requested() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


# ---------------------------------------------------------------------------------------------------- logging
class _DropFilter(logging.Filter):
    """Drops library records that carry no information for a user of the command line."""

    def __init__(self, substrings: Sequence[str] = (), below: int | None = None):
        super().__init__()
        self.substrings = tuple(substrings)
        self.below = below

    def filter(self, record: logging.LogRecord) -> bool:
        if self.below is not None and record.levelno < self.below:
            return False
        if self.substrings:
            message = record.getMessage()
            return not any(text in message for text in self.substrings)
        return True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (so a replaced stderr, e.g. under capture, works)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


# (logger name, filter): attached to the logger itself, so they hold whatever handlers the library adds.
_LIBRARY_FILTERS: tuple[tuple[str, logging.Filter], ...] = (
    # "Loading faiss with AVX2 support." and friends, once per process.
    ("faiss.loader", _DropFilter(below=logging.WARNING)),
    ("faiss", _DropFilter(below=logging.WARNING)),
    # bm25s sets its logger to DEBUG at import and lets the records propagate.
    ("bm25s", _DropFilter(below=logging.WARNING)),
    # DeepSpeed warns on every import on a machine without a GPU.
    ("DeepSpeed", _DropFilter(["Setting accelerator to CPU", "Setting ds_accelerator to"])),
    # LLaRA tokenizes a text, then cuts it to its token budget before the suffix is added: the tokenizer's
    # warning about an over-long *intermediate* sequence describes nothing that reaches the model.
    ("transformers.tokenization_utils_base", _DropFilter(["sequence length is longer than the specified maximum"])),
    ("transformers.tokenization_utils_fast", _DropFilter(["sequence length is longer than the specified maximum"])),
)
_OUR_LOGGERS = ("llara", "trainers", "hub_card", "modeling_llara")


def configure_logging() -> None:
    """Quiet defaults for a command-line run: our loggers at INFO, libraries at WARNING, known chatter dropped.

    Idempotent. The root handler is only added when the root logger has none (an embedding application or
    a test harness keeps its own).
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    for name in _OUR_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    for name, flt in _LIBRARY_FILTERS:
        logger = logging.getLogger(name)
        if flt not in logger.filters:
            logger.addFilter(flt)


# ----------------------------------------------------------------------------------------------------- errors
@contextlib.contextmanager
def _argparse_raises() -> Iterator[None]:
    """Inside the boundary, ``parser.error`` raises :class:`UsageError` instead of printing the usage block and
    exiting: every parser (ours, HfArgumentParser, mteb's) then reports through the same one line."""
    original = argparse.ArgumentParser.error

    def error(self, message):  # noqa: ANN001 - argparse's signature
        raise UsageError(message)

    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def _raised_in_our_code(error: BaseException) -> bool:
    tb = error.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and os.path.abspath(last.tb_frame.f_code.co_filename).startswith(_OUR_DIRS)


def is_user_error(error: BaseException) -> bool:
    """Errors that describe bad input, as opposed to a bug."""
    if isinstance(error, (UsageError, ValueError, OSError)):
        return True
    if type(error).__module__.split(".")[0] in _OUR_PACKAGES:
        return True
    # KeyError / TypeError are validation errors when our code raised them; deep in a library they are bugs.
    return isinstance(error, (KeyError, TypeError)) and _raised_in_our_code(error)


def describe(error: BaseException) -> str:
    """One line saying what went wrong and where."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.strerror}: {error.filename}"
        if error.filename2 is not None:
            text += f" -> {error.filename2}"
    elif isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0]) if isinstance(error.args[0], str) else f"missing key {error.args[0]!r}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def _strip_prefix(text: str, verb: str) -> str:
    for prefix in (f"llara {verb}: error: ", f"llara {verb}: ", "error: "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def run_verb(verb: str, main: Callable[[list[str] | None], int | None], argv: Sequence[str] | None = None,
             debug: bool | None = None) -> int:
    """Run one sub-command's ``main(argv)`` inside the error boundary; returns the exit status."""
    debug = debug_requested() if debug is None else debug
    configure_logging()
    prog = f"llara {verb}"
    finished = False
    try:
        with _argparse_raises():
            result = main(list(argv) if argv is not None else None)
        finished = True
        return int(result or 0)
    except SystemExit as stop:
        # argparse's --help exits 0; a script may exit with a status or with a message.
        if stop.code is None or isinstance(stop.code, int):
            return int(stop.code or 0)
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {_strip_prefix(' '.join(str(stop.code).split()), verb)}", file=sys.stderr)
        return USAGE_EXIT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPT_EXIT
    except Exception as error:  # the boundary: every exception ends here as one line
        if debug:
            traceback.print_exc()
        message = _strip_prefix(describe(error), verb)
        if isinstance(error, UsageError):
            print(f"{prog}: error: {message}", file=sys.stderr)
            return USAGE_EXIT
        if is_user_error(error):
            print(f"{prog}: error: {message}", file=sys.stderr)
            return ERROR_EXIT
        hint = "" if debug else " (run with --debug for the traceback)"
        print(f"{prog}: error: internal error: {type(error).__name__}: {message}{hint}", file=sys.stderr)
        return ERROR_EXIT
    finally:
        close_process_group(wait=finished)


def close_process_group(wait: bool = True) -> None:
    """End a distributed run (torchrun) cleanly: every rank waits for the others (the main process may still be
    writing the export) and the process group is destroyed while the interpreter is alive.

    A rank that exits with its gloo process group still open can abort at interpreter shutdown ("terminate
    called without an active exception", SIGABRT): the backend's worker threads still hold work objects. After
    a failure, ``wait=False`` skips the barrier (the other ranks may be gone) and only destroys the group.
    A process that never imported ``torch.distributed`` has nothing to close.
    """
    global _ran_distributed
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    _ran_distributed = True
    try:
        if wait:
            dist.barrier()
        dist.destroy_process_group()
    except Exception as error:  # a teardown failure must not mask the run's own exit status
        logging.getLogger(__name__).warning("could not close the distributed process group: %s", describe(error))


def exit_process(status: int) -> None:
    """Leave the process with ``status``; after a distributed run, without the interpreter's shutdown.

    Destroying the process group is not enough on every backend: a rank can still abort in the interpreter's
    shutdown ("terminate called without an active exception", SIGABRT, seen with DeepSpeed ZeRO-3 on gloo) when
    a C++ object that owns a joinable thread is destroyed there, and torchrun then reports the whole run as failed
    although every rank finished its work. Everything a command writes is complete (and written atomically) when
    it returns, so after a distributed run the process flushes its streams and logs and exits at once.
    A process that ran no process group exits normally.
    """
    if not _ran_distributed:
        sys.exit(status)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def script_entry(verb: str, main: Callable[[list[str] | None], int | None]) -> None:
    """``if __name__ == "__main__": script_entry("index", main)``: ``python -m llara.scripts.<verb>`` gets
    the same boundary as ``llara <verb>`` (LLARA_DEBUG=1 for tracebacks)."""
    exit_process(run_verb(verb, main, sys.argv[1:]))


__all__ = ["UsageError", "close_process_group", "configure_logging", "describe", "exit_process", "is_user_error", "run_verb",
           "script_entry"]
