"""Fixtures for the process-level tests: real ``meshd run`` daemons on 127.0.0.1.

``cluster`` is a factory: ``cluster(5)`` writes five configurations with real
secrets (``meshd.testing.cluster.LocalCluster``), starts the daemons and
returns once every control socket answers. Everything it started is stopped
at teardown (SIGTERM, then SIGKILL for a daemon that does not exit in time)
and the directory is removed.

``shared_cluster`` is one converged 5-node cluster per module, for tests that
only observe it or poke it in ways the others do not notice (they compare
counters before and after, never absolute values).

The root directory comes from ``tempfile.mkdtemp(dir="/tmp")``, not pytest's
``tmp_path``: a unix socket path must fit in 107 bytes and pytest's paths can
be longer than that.

When a test fails, the last lines of every daemon log of the clusters alive
at that moment are added to its report (section "meshd logs").
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshd.testing.cluster import ControlError, LocalCluster

#: Lines of each daemon log shown when a test fails.
LOG_TAIL_LINES = 40
#: Seconds for all daemons of a new cluster to answer their control socket.
START_TIMEOUT = 30.0
#: Seconds for a new shared cluster to converge (every node sees all alive).
SHARED_CONVERGE_TIMEOUT = 15.0

#: Clusters whose daemons may be running, for the failure report.
_ACTIVE: list[LocalCluster] = []


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(text.splitlines()[-lines:])


def daemon_logs(clusters: list[LocalCluster], lines: int = LOG_TAIL_LINES) -> str:
    """The tail of every daemon log of ``clusters``, one block per node."""
    blocks = []
    for c in clusters:
        for name in c.configs:
            path = c.log_path(name)
            if path.exists():
                blocks.append(f"----- {path} (last {lines} lines) -----\n{_tail(path, lines)}")
    return "\n".join(blocks)


class ClusterFactory:
    """Creates LocalClusters in subdirectories of one short root; stops them all on close."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clusters: list[LocalCluster] = []

    def __call__(
        self, size: int = 5, *, start: bool = True, seed_first: bool = True, **kwargs: Any
    ) -> LocalCluster:
        """A new LocalCluster of ``size`` nodes (``kwargs`` go to LocalCluster).

        With ``start``, return once every control socket answers. With
        ``seed_first``, node-1 (everyone's seed) is up before the others
        start, so their first join succeeds instead of waiting for
        ``[join] retry_interval`` (5 s); without it all start at once.
        """
        directory = self.root / f"c{len(self.clusters) + 1}"
        directory.mkdir()
        c = LocalCluster(directory, size, **kwargs)
        self.clusters.append(c)
        _ACTIVE.append(c)
        if start:
            first = c.names[:1] if seed_first else []
            for name in first:
                c.start(name, timeout=START_TIMEOUT)
            for name in c.names[len(first) :]:
                c.start(name, wait=False)
            for name in c.names[len(first) :]:
                if not c.wait_until(functools.partial(_answers, c, name), START_TIMEOUT):
                    raise ControlError(f"{name} did not answer within {START_TIMEOUT} s")
        return c

    def close(self) -> None:
        errors = []
        for c in self.clusters:
            try:
                c.stop_all()
            except Exception as e:  # keep stopping the others
                errors.append(e)
            finally:
                if c in _ACTIVE:
                    _ACTIVE.remove(c)
        self.clusters.clear()
        if errors:
            raise errors[0]


def _answers(c: LocalCluster, name: str) -> bool:
    """Whether ``name``'s control socket answers; raises if its process exited."""
    proc = c.procs[name]
    if proc.poll() is not None:
        raise ControlError(f"{name} exited with status {proc.returncode}; see {c.log_path(name)}")
    try:
        c.request(name, "info", timeout=1.0)
    except ControlError:
        return False
    return True


def _short_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="meshd-", dir="/tmp"))


@pytest.fixture
def cluster() -> Iterator[Callable[..., LocalCluster]]:
    """Factory of started LocalClusters: ``cluster(size=5, **LocalCluster kwargs)``."""
    root = _short_root()
    factory = ClusterFactory(root)
    try:
        yield factory
    finally:
        try:
            factory.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[LocalCluster]:
    """One converged 5-node cluster for the whole module (do not kill its nodes)."""
    root = _short_root()
    factory = ClusterFactory(root)
    try:
        c = factory(5)
        if not c.wait_until(c.converged, SHARED_CONVERGE_TIMEOUT):
            pytest.fail(
                f"the shared cluster did not converge within {SHARED_CONVERGE_TIMEOUT} s\n"
                + daemon_logs([c])
            )
        yield c
    finally:
        try:
            factory.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add the tail of every running cluster's daemon logs to a failure's report."""
    report = yield
    if report.failed and report.when in ("setup", "call") and _ACTIVE:
        report.sections.append(("meshd logs", daemon_logs(list(_ACTIVE))))
    return report
