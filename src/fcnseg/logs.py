"""User-facing output: the "fcnseg" logger tree, configured once.

Every module logs to ``logging.getLogger(__name__)`` (a child of "fcnseg"); nothing prints progress
or warnings itself. :func:`configure` (called by the `fcnseg` command, and by ``train()`` when the
program has configured no logging at all) sends those records to stderr as plain lines:

* on a terminal: ``message`` (warnings as ``warning: message``), written around any progress bar;
* otherwise (a file, a pipe, a CI log): ``2026-01-31 12:00:00 message``, one record per line.

Python warnings (``warnings.warn`` in fcnseg or a library) become the same plain lines, without
the source line that Python's default warning display adds.
"""

from __future__ import annotations

import logging
import sys
import warnings

ROOT = "fcnseg"
_state = {"configured": False, "showwarning": None}


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class PlainFormatter(logging.Formatter):
    """``[time ]message``; warnings and errors say so in front of the message."""

    def __init__(self, timestamps: bool):
        super().__init__(datefmt="%Y-%m-%d %H:%M:%S")
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        if self.timestamps:
            stamp = self.formatTime(record, self.datefmt)
            text = "\n".join(f"{stamp} {line}" for line in text.splitlines() or [""])
        return text


class StderrHandler(logging.Handler):
    """Writes to the *current* sys.stderr (so redirections made later are honoured), through
    tqdm.write when stderr is a terminal so that lines never tear a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if stderr_is_terminal():
                from tqdm import tqdm

                tqdm.write(text, file=sys.stderr)
            else:
                sys.stderr.write(text + "\n")
                sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never stop the program
            self.handleError(record)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    first = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    logging.getLogger(f"{ROOT}.warnings").warning("%s", first)


def configure(level: int = logging.INFO, timestamps: bool | None = None) -> logging.Logger:
    """Send the "fcnseg" logger tree to stderr as plain lines (idempotent; see the module docstring).

    ``timestamps`` defaults to "when stderr is not a terminal"."""
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if isinstance(h, StderrHandler)]:
        logger.removeHandler(handler)
    handler = StderrHandler()
    handler.setFormatter(PlainFormatter(not stderr_is_terminal() if timestamps is None else timestamps))
    logger.addHandler(handler)
    logger.setLevel(level)
    if _state["showwarning"] is None:
        _state["showwarning"] = warnings.showwarning
        warnings.showwarning = _show_warning
    _state["configured"] = True
    return logger


def configure_if_unset() -> None:
    """:func:`configure`, unless the program (or an earlier call) already set up logging."""
    if _state["configured"] or logging.getLogger(ROOT).handlers or logging.getLogger().handlers:
        return
    configure()
