"""The one place where anything that escapes a command becomes one line on stderr and an exit code.

- `EvoPaiError` (bad input, named field and fix): its message, exit 2.
- typer/click usage errors (typer >= 0.29 raises its own vendored click exceptions, caught here by
  those classes): `error: <message> (see `evo-pai CMD --help`)`, exit 2.
- `OSError` (full disk, read-only folder, ...): the file and the cause, exit 2; inside a run, what
  was written stays as it was (atomic writes, whole log lines) and the line says how to resume.
- Ctrl-C: `interrupted; resume with: evo-pai resume <dir>`, exit 130; a second Ctrl-C during the
  clean-up exits at once with the same line, never a traceback.
- anything else is a bug: `internal error: <type>: <message>`, exit 2.
`EVO_PAI_DEBUG=1` prints the traceback too.
"""
from __future__ import annotations

import errno
import os
import signal
import sys
import traceback
from contextlib import contextmanager
from typing import Callable, Iterator, NoReturn

from evo_pai.core.errors import EvoPaiError


def _classes(name: str) -> tuple[type, ...]:
    """Exception class `name` wherever the installed typer raises it from: typer >= 0.29 vendors click
    (typer._click), older ones use click itself; both are looked up, neither is assumed."""
    import importlib

    found = []
    for module in ("typer", "typer._click.exceptions", "click.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
            found.append(cls)
    return tuple(found)


Exit, Abort = _classes("Exit"), _classes("Abort")
NoArgsIsHelpError, UsageError, ClickException = _classes("NoArgsIsHelpError"), _classes("UsageError"), _classes("ClickException")

DEBUG_ENV = "EVO_PAI_DEBUG"
USAGE_EXIT = 2
INTERRUPT_EXIT = 130

Hint = Callable[[], "str | None"]  # the command that continues the interrupted work, if there is one
_hints: list[Hint] = []


class Interrupted(Exception):
    """Ctrl-C inside `resumable`, carried past typer (which would turn a KeyboardInterrupt into Exit(130))."""

    def __init__(self, hint: str | None):
        super().__init__(hint or "")
        self.hint = hint


def _current_hint() -> str | None:
    try:
        return _hints[-1]() if _hints else None
    except Exception:  # noqa: BLE001 - a hint must never hide the interruption itself
        return None


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def os_error_line(exc: OSError, hint: str | None) -> str:
    code = errno.errorcode.get(exc.errno or 0, "")
    where = f"{exc.filename}: " if exc.filename else ""
    text = f"{where}{exc.strerror or exc}" + (f" ({code})" if code else "")
    if hint:
        text += f"; what was written before is intact; fix it, then resume with: {hint}"
    return text


@contextmanager
def resumable(hint: Hint) -> Iterator[None]:
    """Long work whose interruption can be continued: Ctrl-C and OS errors get the way back in `hint()`."""
    _hints.append(hint)
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(_current_hint()) from None
    except OSError as exc:
        raise EvoPaiError(os_error_line(exc, _current_hint())) from exc
    finally:
        _hints.pop()


def _say(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed or broken stderr: the exit code still tells
        pass


def _interrupted_line(hint: str | None) -> str:
    return f"interrupted; resume with: {hint}" if hint else "interrupted"


def _on_second_sigint(signum, frame) -> None:  # noqa: ARG001
    _say(_interrupted_line(_current_hint()))
    os._exit(INTERRUPT_EXIT)  # the user asked twice: no clean-up, no traceback


def _on_first_sigint(signum, frame) -> None:  # noqa: ARG001
    signal.signal(signal.SIGINT, _on_second_sigint)
    raise KeyboardInterrupt


def _debug(exc: BaseException) -> None:
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


def _fail(message: str, exc: BaseException, code: int = USAGE_EXIT) -> NoReturn:
    _debug(exc)
    _say(message)
    sys.exit(code)


def _interrupt(hint: str | None, exc: BaseException) -> NoReturn:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # nothing may interrupt the goodbye
    _debug(exc)
    _say(_interrupted_line(hint))
    sys.exit(INTERRUPT_EXIT)


def run_app(app) -> NoReturn:
    """Run a typer app; every way out is an exit code and at most one line on stderr."""
    ours = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    try:
        if ours:
            signal.signal(signal.SIGINT, _on_first_sigint)
    except ValueError:  # not the main thread: Python's own Ctrl-C handling stays
        ours = False
    try:
        return _run(app)
    finally:  # called in-process (tests, notebooks): give the caller its Ctrl-C back if none came
        if ours and signal.getsignal(signal.SIGINT) is _on_first_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _run(app) -> NoReturn:
    try:
        rv = app(standalone_mode=False)
    except EvoPaiError as exc:
        _fail(f"error: {one_line(exc)}", exc)
    except Interrupted as exc:
        _interrupt(exc.hint, exc)
    except KeyboardInterrupt as exc:
        _interrupt(_current_hint(), exc)
    except Exit as exc:
        sys.exit(exc.exit_code)
    except NoArgsIsHelpError as exc:  # `evo-pai` alone: the help, and the usage-error code
        print(exc.format_message())
        sys.exit(USAGE_EXIT)
    except UsageError as exc:
        ctx = getattr(exc, "ctx", None)
        see = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        _fail(f"error: {one_line(exc.format_message())}{see}", exc)
    except ClickException as exc:
        _fail(f"error: {one_line(exc.format_message())}", exc)
    except Abort as exc:  # end of input at a prompt
        _interrupt(None, exc)
    except OSError as exc:
        _fail(f"error: {os_error_line(exc, _current_hint())}", exc)
    except Exception as exc:  # a bug: still one line, and the way to see more
        _fail(f"internal error: {type(exc).__name__}: {one_line(exc)[:500]} (set {DEBUG_ENV}=1 for the traceback)", exc)
    if rv == INTERRUPT_EXIT:  # typer turned a Ctrl-C outside any command body into Exit(130)
        _interrupt(_current_hint(), KeyboardInterrupt())
    sys.exit(rv if isinstance(rv, int) else 0)
