"""Logging set-up: journald priorities under systemd, timestamps elsewhere.

Under systemd, stdout and stderr are a stream to journald, which records the
time itself and reads a ``<N>`` syslog priority prefix on each line
(``SyslogLevelPrefix=yes`` is the default; sd-daemon(3)). journald splits the
stream at newlines, so a traceback is many entries: every line carries the
prefix, or its continuation lines would land at the default priority (info)
and an error's stack would hide from ``journalctl -p err``.

How to tell: systemd sets ``JOURNAL_STREAM=<st_dev>:<st_ino>`` of the stream
it connected. That is checked against the stream we write to, as systemd
documents, since a child started from a journald-connected shell inherits the
variable but may have its stderr redirected to a file or a terminal.

Secrets: the cluster secret and keyring keys are 32 bytes written in base64
(44 characters ending in ``=``). Anything of that shape is replaced in the
final text, traceback included, so a key that reaches an exception message
does not reach the journal.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import TextIO

__all__ = [
    "HUMAN_FORMAT",
    "JOURNAL_FORMAT",
    "configure_logging",
    "journal_stream_matches",
    "syslog_priority",
]

#: Without systemd: local time, level, logger, message.
HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Under journald (before the per-line ``<N>``): it adds time and identifier.
JOURNAL_FORMAT = "%(name)s: %(message)s"

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}  # fmt: skip

# base64 (standard or URL-safe) of 32 bytes, not part of a longer token.
_SECRET = re.compile(r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_-]{43}=(?![A-Za-z0-9+/_=-])")
REDACTED = "[redacted]"


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level (a custom level rounds down)."""
    if levelno >= logging.CRITICAL:
        return 2  # crit
    if levelno >= logging.ERROR:
        return 3  # err
    if levelno >= logging.WARNING:
        return 4  # warning
    if levelno >= logging.INFO:
        return 6  # info
    return 7  # debug


def journal_stream_matches(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """True when ``stream`` is the journald stream systemd announced in ``JOURNAL_STREAM``."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        info = os.fstat(stream.fileno())
        return (info.st_dev, info.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        # No file descriptor (StringIO, closed, pytest capture) or bad value.
        return False


class _Formatter(logging.Formatter):
    """Redacts secrets from the whole formatted text."""

    def format(self, record: logging.LogRecord) -> str:
        return _SECRET.sub(REDACTED, super().format(record))


class _JournalFormatter(_Formatter):
    """``<N>`` before every line, no timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


class _Handler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_logging` installs (and replaces)."""


def configure_logging(
    level: str, *, stream: TextIO | None = None, environ: Mapping[str, str] = os.environ
) -> logging.Handler:
    """Send all logging to ``stream`` in the journald or the human format.

    Calling it again replaces the handler it installed before; handlers that
    others installed on the root logger are left alone.

    Args:
        level: ``"debug"``, ``"info"``, ``"warning"``, ``"error"`` or ``"critical"``.
        stream: where to write (default: ``sys.stderr`` at call time).
        environ: where ``JOURNAL_STREAM`` is looked up.

    Returns:
        The installed handler.

    Raises:
        ValueError: unknown level.
    """
    try:
        levelno = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; one of {', '.join(_LEVELS)}") from None
    stream = sys.stderr if stream is None else stream
    handler = _Handler(stream)
    if journal_stream_matches(stream, environ):
        handler.setFormatter(_JournalFormatter(JOURNAL_FORMAT))
    else:
        handler.setFormatter(_Formatter(HUMAN_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levelno)
    return handler
