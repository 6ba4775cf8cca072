"""Tests for meshd.runtime.logs: journald priorities, human format, redaction.

``JOURNAL_STREAM`` is simulated the way systemd sets it: the st_dev:st_ino of
the file the log goes to (a real file here instead of journald's socket).
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from meshd.runtime.logs import REDACTED, configure_logging, journal_stream_matches, syslog_priority

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
SECRET = base64.b64encode(bytes(range(32))).decode()  # the shape of `meshd keygen` output


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[TextIO]:
    with open(tmp_path / "stderr", "w+", encoding="utf-8") as f:
        yield f


def journal_env(f: TextIO) -> dict[str, str]:
    st = os.fstat(f.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def written(f: TextIO) -> list[str]:
    f.flush()
    f.seek(0)
    return f.read().splitlines()


@pytest.mark.parametrize(
    ("levelno", "priority"),
    [
        (logging.DEBUG, 7),
        (logging.INFO, 6),
        (logging.WARNING, 4),
        (logging.ERROR, 3),
        (logging.CRITICAL, 2),
        (logging.INFO + 5, 6),  # custom levels round down
        (logging.CRITICAL + 10, 2),
        (1, 7),
    ],
)
def test_syslog_priority(levelno: int, priority: int) -> None:
    assert syslog_priority(levelno) == priority


def test_journal_format_prefixes_every_line(log_file: TextIO) -> None:
    configure_logging("debug", stream=log_file, environ=journal_env(log_file))
    log = logging.getLogger("meshd")
    log.debug("probe %s", "node-b")
    log.info("member %s joined", "node-b")
    log.warning("join through %s failed", "10.0.0.9:7946")
    log.critical("two\nlines")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("crashed")
    lines = written(log_file)
    assert lines[:5] == [
        "<7>meshd: probe node-b",
        "<6>meshd: member node-b joined",
        "<4>meshd: join through 10.0.0.9:7946 failed",
        "<2>meshd: two",
        "<2>lines",
    ]
    assert lines[5] == "<3>meshd: crashed"
    traceback = lines[6:]
    assert traceback[0] == "<3>Traceback (most recent call last):"
    assert traceback[-1] == "<3>RuntimeError: boom"
    assert all(line.startswith("<3>") for line in traceback)
    assert not any(TIMESTAMP.search(line) for line in lines)


def test_human_format_without_journal_stream(log_file: TextIO) -> None:
    configure_logging("info", stream=log_file, environ={})
    logging.getLogger("meshd").debug("hidden")
    logging.getLogger("meshd.mdns").warning("no interfaces")
    (line,) = written(log_file)
    assert TIMESTAMP.match(line)
    assert line.endswith(" WARNING meshd.mdns: no interfaces")
    assert not line.startswith("<")


def test_journal_stream_of_another_file_is_ignored(log_file: TextIO, tmp_path: Path) -> None:
    # JOURNAL_STREAM inherited from a journald-connected parent, stderr redirected.
    with open(tmp_path / "other", "w") as other:
        env = journal_env(other)
    configure_logging("info", stream=log_file, environ=env)
    logging.getLogger("meshd").info("hello")
    (line,) = written(log_file)
    assert TIMESTAMP.match(line)


@pytest.mark.parametrize("value", ["", "garbage", "1:x", "::"])
def test_journal_stream_malformed(log_file: TextIO, value: str) -> None:
    assert not journal_stream_matches(log_file, {"JOURNAL_STREAM": value})


def test_journal_stream_without_file_descriptor() -> None:
    assert not journal_stream_matches(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def test_configure_logging_replaces_its_own_handler(log_file: TextIO) -> None:
    root = logging.getLogger()
    others = list(root.handlers)
    first = configure_logging("info", stream=log_file, environ={})
    second = configure_logging("warning", stream=log_file, environ=journal_env(log_file))
    assert first not in root.handlers
    assert root.handlers == [*others, second]  # pytest's own handlers untouched
    assert root.level == logging.WARNING
    logging.getLogger("meshd").info("hidden")
    logging.getLogger("meshd").warning("shown")
    assert written(log_file) == ["<4>meshd: shown"]


def test_configure_logging_rejects_unknown_level() -> None:
    with pytest.raises(ValueError, match="unknown log level 'verbose'"):
        configure_logging("verbose", environ={})


def test_secrets_are_redacted_everywhere(log_file: TextIO) -> None:
    configure_logging("info", stream=log_file, environ=journal_env(log_file))
    log = logging.getLogger("meshd")
    urlsafe = base64.urlsafe_b64encode(bytes(range(200, 232))).decode()
    log.info("installing key %s", SECRET)
    log.info("url-safe %s.", urlsafe)
    try:
        raise ValueError(f"bad key {SECRET}")
    except ValueError:
        log.exception("keys install failed")
    text = "\n".join(written(log_file))
    assert SECRET not in text
    assert urlsafe not in text
    assert text.count(REDACTED) == 3
    assert "<6>meshd: installing key [redacted]" in text
    assert "<3>ValueError: bad key [redacted]" in text


def test_redaction_spares_fingerprints_and_longer_tokens(log_file: TextIO) -> None:
    configure_logging("info", stream=log_file, environ={})
    longer = base64.b64encode(bytes(range(33))).decode()  # 33 bytes: not a key
    logging.getLogger("meshd").info("key 0123456789abcdef, blob %s", longer)
    (line,) = written(log_file)
    assert line.endswith(f"key 0123456789abcdef, blob {longer}")
