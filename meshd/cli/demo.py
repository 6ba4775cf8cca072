"""``meshd demo``: real daemons on 127.0.0.1, one of them killed, detected and restarted.

The demo starts ``N`` real ``python -m meshd run`` processes in a temporary
directory through :class:`~meshd.testing.cluster.LocalCluster` (encrypted
UDP gossip, mutual-TLS streams, control sockets: nothing is simulated) and
narrates four phases, each bounded by ``--timeout``:

1. start ``node-1`` .. ``node-N`` (``node-2`` and up join through ``node-1``)
   and wait until every node sees all ``N`` alive;
2. SIGKILL the last node and watch the survivors suspect it, then declare it
   dead; report the detection time;
3. restart it with the same configuration and state: it rejoins with a
   higher incarnation under the same node id;
4. stop every daemon with SIGTERM (graceful leave) and check each exits 0.

Membership tables are the real ``meshctl status`` output (the CLI run in this
process against a node's control socket). Waiting is always polling with a
deadline, never a fixed sleep. Whatever happens (failure, Ctrl-C, SIGTERM),
every daemon is stopped before the demo returns.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TextIO

from meshd.cli.exit_codes import ExitStatus
from meshd.testing.cluster import ControlError, LocalCluster

__all__ = ["main"]

#: Seconds between two polls of the daemons' control sockets.
_POLL = 0.1
#: Seconds between two redraws of a live line on a terminal.
_REDRAW = 0.1
#: Lines of a daemon's log shown when a phase fails.
_LOG_TAIL = 20
#: Order in which a live line lists how a member is seen.
_STATUS_ORDER = ("dead", "suspect", "alive", "left", "unknown", "unreachable")
_STATUS_COLOR = {"alive": "32", "suspect": "33", "dead": "31", "left": "34"}


class _PhaseFailed(Exception):
    """A phase did not complete: what did not happen and whose logs to show."""

    def __init__(self, message: str, logs: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.logs = list(logs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshd demo",
        description=(
            "Start N real meshd daemons on 127.0.0.1 in a temporary directory, "
            "SIGKILL one and watch the others detect it, restart it and watch it "
            "rejoin, then stop them all gracefully."
        ),
        epilog=(
            "'meshd demo --simulated [--help]' runs the in-process simulator instead "
            "(virtual time, no sockets)."
        ),
        allow_abbrev=False,
    )
    parser.add_argument(
        "--nodes", type=int, default=5, metavar="N", help="number of daemons, 2..30 (default 5)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECS",
        help="give up on a phase after SECS seconds (default 60)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (configs, state, logs) and print its path",
    )
    parser.add_argument("--no-color", action="store_true", help="plain text, no ANSI colours")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the demo.

    Args:
        argv: command-line arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        0 when every phase completed in time, 1 when one did not, 130 when
        interrupted (Ctrl-C or SIGTERM).

    Raises:
        SystemExit: bad arguments (status 2) or ``--help`` (status 0), from argparse.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if not 2 <= args.nodes <= 30:
        parser.error(f"--nodes must be within 2..30, got {args.nodes}")
    if not args.timeout > 0:
        parser.error(f"--timeout must be > 0, got {args.timeout:g}")
    out = sys.stdout
    tty = out.isatty()
    demo = _Demo(
        nodes=args.nodes,
        timeout=args.timeout,
        keep=args.keep,
        out=out,
        live=tty,
        color=tty and not args.no_color,
    )
    return demo.run()


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt meanwhile, so the daemons get cleaned up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _tail(path: Path, lines: int = _LOG_TAIL) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return [f"(cannot read {path}: {exc})"]
    return text.splitlines()[-lines:] or ["(empty)"]


class _Demo:
    """The story, its narration and its timings."""

    def __init__(
        self, *, nodes: int, timeout: float, keep: bool, out: TextIO, live: bool, color: bool
    ) -> None:
        self.n = nodes
        self.timeout = timeout
        self.keep = keep
        self.out = out
        self.live = live
        self.color = color
        self.names = [f"node-{i}" for i in range(1, nodes + 1)]
        self.victim = self.names[-1]
        self.survivors = self.names[:-1]
        self.started = time.monotonic()
        self.results: dict[str, float] = {}
        self.notes: dict[str, str] = {}
        self.node_id = ""
        self.dead_incarnation = 0
        self.cluster: LocalCluster | None = None
        self.root: Path | None = None
        # The live line being drawn: its text without the clock, its start.
        self._live_text: str | None = None
        self._live_first = 0.0
        self._live_drawn = 0.0

    # ------------------------------------------------------------ story

    def run(self) -> int:
        keep = self.keep
        status: int = ExitStatus.ERROR
        with _sigterm_interrupts():
            try:
                self.root = Path(tempfile.mkdtemp(prefix="meshd-demo-"))
                self.cluster = LocalCluster(self.root, self.n)
                self._form()
                self._kill_and_detect()
                self._restart_and_rejoin()
                self._stop()
                self._summary()
                status = ExitStatus.OK
            except _PhaseFailed as failure:
                self._end_live()
                self._report(failure)
                keep = True
            except ControlError as exc:
                # A control request that had to succeed (not a poll) failed.
                self._end_live()
                self._report(_PhaseFailed(str(exc), logs=self._names_in(str(exc))))
                keep = True
            except KeyboardInterrupt:
                self._end_live()
                self.say("interrupted: stopping every daemon")
                status = ExitStatus.INTERRUPTED
            finally:
                self._end_live()
                if self.cluster is not None:
                    self.cluster.stop_all()
                if self.root is not None:
                    if keep:
                        self.say(f"kept {self.root} (configs, state, logs node-N.log)")
                    else:
                        shutil.rmtree(self.root, ignore_errors=True)
        return status

    def _form(self) -> None:
        cluster = self._cluster()
        first = self.names[0]
        self.say(
            self._bold(f"meshd demo: {self.n} real daemons on 127.0.0.1")
            + (f" in {self.root}" if self.keep else "")
        )
        self.say(f"phase 1: starting {self.n} daemons (python -m meshd run --config …)")
        for name in self.names:
            role = (
                "starts the mesh"
                if name == first
                else f"joins through {first} (127.0.0.1:{cluster.ports[first]})"
            )
            self._write(f"    {name}  127.0.0.1:{cluster.ports[name]:<5}  udp+tcp  {role}")
        start = time.monotonic()
        # The seed first: the others join through it as soon as they start.
        self._start_and_wait([first], "the seed's control socket answering")
        self._start_and_wait(self.names[1:], "control sockets answering")
        self.say(
            f"all {self.n} daemons are up ({time.monotonic() - start:.1f} s); forming the mesh"
        )

        def complete() -> tuple[bool, str]:
            views = self._views(self.names)
            full = sum(
                1 for v in views.values() if v is not None and self._sees_all_alive(v, self.names)
            )
            return full == self.n, f"mesh: {full}/{self.n} nodes see all {self.n} alive"

        self._poll(
            complete,
            f"the mesh did not form: not every node saw all {self.n} alive "
            f"within {self.timeout:g} s",
            logs=lambda: self._lagging(self.names, self.names),
        )
        self.results["form"] = time.monotonic() - start
        self.say(
            f"mesh formed: every node sees all {self.n} alive, "
            f"{self.results['form']:.1f} s after the first start"
        )
        self._status_table(first)

    def _names_in(self, text: str) -> list[str]:
        """The node names ``text`` starts with (a ControlError names its node first)."""
        return [n for n in self.names if text.startswith(f"{n}:") or text.startswith(f"{n} ")]

    def _survivors_see(self) -> str:
        count = len(self.survivors)
        return f"all {count} survivors see" if count > 1 else "the survivor sees"

    def _start_and_wait(self, names: list[str], what: str) -> None:
        """Start ``names`` and poll until each one's control socket answers."""
        cluster = self._cluster()
        for name in names:
            cluster.start(name, wait=False)

        def answering() -> tuple[bool, str]:
            count = sum(1 for n in names if self._answers(n))
            return count == len(names), f"{what}: {count}/{len(names)}"

        self._poll(
            answering,
            f"not every daemon opened its control socket within {self.timeout:g} s",
            logs=lambda: [n for n in names if not self._answers(n)][:1],
        )

    def _kill_and_detect(self) -> None:
        cluster = self._cluster()
        victim = self.victim
        info = cluster.request(victim, "info")
        self.node_id = str(info["name"])
        pid = cluster.procs[victim].pid
        self.say(
            f"phase 2: {self._paint('SIGKILL', '31;1')} {victim} (pid {pid}): "
            "no goodbye, its peers have to notice by themselves"
        )
        cluster.kill(victim)
        killed = time.monotonic()
        first_suspect: list[float] = []
        survivors = self.survivors

        def detected() -> tuple[bool, str]:
            seen = self._seen_as(victim, survivors)
            if first_suspect == [] and (seen["suspect"] or seen["dead"]):
                first_suspect.append(time.monotonic() - killed)
            return seen["dead"] == len(survivors), self._seen_line(victim, seen, len(survivors))

        self._poll(
            detected,
            f"{victim} was not declared dead by every survivor within {self.timeout:g} s",
            logs=lambda: [s for s in survivors if not cluster.all_see(victim, "dead", [s])][:1],
        )
        self.results["detect"] = time.monotonic() - killed
        self.results["suspect"] = first_suspect[0] if first_suspect else self.results["detect"]
        self.dead_incarnation = cluster.incarnation(survivors[0], victim)
        self.say(
            f"{self._paint('detected', '1')}: {self._survivors_see()} {victim} "
            f"dead {self.results['detect']:.1f} s after the SIGKILL "
            f"(first suspected after {self.results['suspect']:.1f} s)"
        )
        self._status_table(survivors[0])

    def _restart_and_rejoin(self) -> None:
        cluster = self._cluster()
        victim = self.victim
        survivors = self.survivors
        self.say(f"phase 3: restarting {victim} with the same config and state directory")
        cluster.start(victim, wait=False)
        started = time.monotonic()

        def rejoined() -> tuple[bool, str]:
            seen = self._seen_as(victim, survivors)
            line = self._seen_line(victim, seen, len(survivors))
            own = self._views([victim])[victim]
            if own is None:
                line += f"  ({victim} not answering yet)"
                done = False
            else:
                alive = sum(1 for n in self.names if own.get(n) == "alive")
                line += f"  ({victim} sees {alive}/{self.n} alive)"
                done = alive == self.n
            return done and seen["alive"] == len(survivors), line

        self._poll(
            rejoined,
            f"{victim} did not rejoin (seen alive by every survivor, and seeing every "
            f"node alive) within {self.timeout:g} s",
            logs=lambda: [victim],
        )
        self.results["rejoin"] = time.monotonic() - started
        info = cluster.request(victim, "info")
        node_id = str(info["name"])
        incarnation = int(info["incarnation"])
        seen_incarnation = cluster.incarnation(survivors[0], victim)
        if node_id != self.node_id:
            raise _PhaseFailed(
                f"{victim} came back as {node_id!r}, not {self.node_id!r}", logs=[victim]
            )
        if not incarnation > self.dead_incarnation:
            raise _PhaseFailed(
                f"{victim} rejoined with incarnation {incarnation}, "
                f"not above {self.dead_incarnation}",
                logs=[victim],
            )
        self.notes["incarnation"] = f"{self.dead_incarnation} -> {incarnation}"
        self.say(
            f"{self._paint('rejoined', '1')}: every node sees {victim} alive "
            f"{self.results['rejoin']:.1f} s after the restart; node id {node_id} unchanged, "
            f"incarnation {self.dead_incarnation} -> {incarnation}"
            + (
                ""
                if seen_incarnation == incarnation
                else f" ({survivors[0]} sees {seen_incarnation})"
            )
            + ": the higher incarnation overrides the 'dead' verdict"
        )
        self._status_table(survivors[0])

    def _stop(self) -> None:
        cluster = self._cluster()
        self.say("phase 4: stopping every daemon with SIGTERM (graceful leave)")
        start = time.monotonic()
        for name in self.names:
            remaining = [n for n in self.names if n != name and n in cluster.procs]
            t0 = time.monotonic()
            try:
                code = cluster.terminate(name, timeout=self.timeout)
            except subprocess.TimeoutExpired:
                raise _PhaseFailed(
                    f"{name} did not exit within {self.timeout:g} s of SIGTERM", logs=[name]
                ) from None
            took = time.monotonic() - t0
            if code != 0:
                raise _PhaseFailed(
                    f"{name} exited with status {code} after SIGTERM, not 0", logs=[name]
                )
            line = f"    {name}: exit status 0 after {took:.1f} s"
            if remaining:
                self._await_left(name, remaining)
                line += (
                    f"; {len(remaining)}/{len(remaining)} remaining see it {self._status('left')}"
                )
            self._write(line)
        self.results["stop"] = time.monotonic() - start
        self.say(f"all {self.n} daemons exited 0 after a graceful leave")

    def _await_left(self, name: str, observers: list[str]) -> None:
        cluster = self._cluster()
        self._poll(
            lambda: (cluster.all_see(name, "left", observers), None),
            f"not every remaining node saw {name} as left within {self.timeout:g} s",
            logs=lambda: [o for o in observers if not cluster.all_see(name, "left", [o])][:1],
        )

    def _summary(self) -> None:
        rows = [
            ("mesh formed", self.results["form"], f"{self.n} daemons, every node sees all alive"),
            ("first suspicion", self.results["suspect"], "after the SIGKILL"),
            (
                "detection",
                self.results["detect"],
                f"after the SIGKILL, until {self._survivors_see()} it dead",
            ),
            (
                "rejoin",
                self.results["rejoin"],
                f"after the restart; incarnation {self.notes['incarnation']}",
            ),
            ("graceful stop", self.results["stop"], f"{self.n}/{self.n} exited 0"),
        ]
        self._write(self._bold("summary"))
        for label, seconds, note in rows:
            self._write(f"    {label:<16} {seconds:6.1f} s   {note}")
        self._write(f"    {'total':<16} {time.monotonic() - self.started:6.1f} s")
        if self.keep:
            self._write(f"    {'logs':<16} {self.root}/node-1.log … {self.victim}.log (kept)")
        else:
            self._write("    (the temporary directory is removed; --keep keeps it, with the logs)")

    # ------------------------------------------------------------ waiting

    def _poll(
        self,
        check: Callable[[], tuple[bool, str | None]],
        failure: str,
        *,
        logs: Callable[[], list[str]],
    ) -> None:
        """Poll ``check`` (done?, live line or None) until done or ``--timeout``."""
        origin = time.monotonic()
        deadline = origin + self.timeout
        while True:
            self._check_processes()
            done, line = check()
            if line is not None:
                self._live(line, origin)
            if done:
                self._end_live()
                return
            if time.monotonic() >= deadline:
                self._end_live()
                raise _PhaseFailed(failure, logs=logs())
            time.sleep(_POLL)

    def _check_processes(self) -> None:
        for name, proc in self._cluster().procs.items():
            if proc.poll() is not None:
                raise _PhaseFailed(
                    f"{name} exited unexpectedly with status {proc.returncode}", logs=[name]
                )

    # ------------------------------------------------------------ observation

    def _cluster(self) -> LocalCluster:
        assert self.cluster is not None
        return self.cluster

    def _answers(self, name: str) -> bool:
        try:
            self._cluster().request(name, "info", timeout=1.0)
        except ControlError:
            return False
        return True

    def _views(self, observers: Sequence[str]) -> dict[str, dict[str, str] | None]:
        """Each observer's membership view (None: its control socket did not answer)."""
        views: dict[str, dict[str, str] | None] = {}
        for observer in observers:
            try:
                views[observer] = self._cluster().view(observer)
            except ControlError:
                views[observer] = None
        return views

    @staticmethod
    def _sees_all_alive(view: dict[str, str], names: Sequence[str]) -> bool:
        return all(view.get(n) == "alive" for n in names)

    def _lagging(self, observers: Sequence[str], names: Sequence[str]) -> list[str]:
        views = self._views(observers)
        return [o for o, v in views.items() if v is None or not self._sees_all_alive(v, names)][:1]

    def _seen_as(self, member: str, observers: Sequence[str]) -> collections.Counter[str]:
        seen: collections.Counter[str] = collections.Counter()
        for view in self._views(observers).values():
            seen["unreachable" if view is None else view.get(member, "unknown")] += 1
        return seen

    def _seen_line(self, member: str, seen: collections.Counter[str], total: int) -> str:
        parts = [
            f"{self._status(status)} {seen[status]}/{total}"
            for status in _STATUS_ORDER
            if seen[status]
        ]
        return f"{member}: " + "  ".join(parts)

    # ------------------------------------------------------------ output

    def _status_table(self, name: str) -> None:
        """Print ``meshctl status`` as run against ``name``'s control socket."""
        from meshd.cli import meshctl

        socket_path = self._cluster().socket_path(name)
        argv = ["--socket", str(socket_path), "status"]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = meshctl.main(argv)
        if code == ExitStatus.INTERRUPTED:
            raise KeyboardInterrupt
        self._write(self._paint(f"  $ meshctl {' '.join(argv)}", "2"))
        for line in (out.getvalue() + err.getvalue()).splitlines():
            self._write(f"  {line}")
        if code != ExitStatus.OK:
            raise _PhaseFailed(f"meshctl status against {name} exited {code}", logs=[name])

    def _live(self, text: str, origin: float) -> None:
        """Show a live line: printed when it changes; on a terminal also redrawn in place."""
        now = time.monotonic()
        if text != self._live_text:
            self._end_live()
            self._live_text = text
            self._live_first = now - origin
            self._live_drawn = 0.0
            if not self.live:
                self._write(f"    t=+{self._live_first:.1f}s  {text}")
                return
        if self.live and now - self._live_drawn >= _REDRAW:
            self._live_drawn = now
            clock = self._paint(f"  (now +{now - origin:.1f}s)", "2")
            self.out.write(f"\r\x1b[K    t=+{self._live_first:.1f}s  {text}{clock}")
            self.out.flush()

    def _end_live(self) -> None:
        """Finish the live line (on a terminal: drop its clock, end the line)."""
        if self._live_text is not None and self.live:
            self.out.write(f"\r\x1b[K    t=+{self._live_first:.1f}s  {self._live_text}\n")
            self.out.flush()
        self._live_text = None

    def _report(self, failure: _PhaseFailed) -> None:
        self.say(self._paint(f"FAILED: {failure.message}", "31;1"))
        cluster = self.cluster
        if cluster is None:
            return
        for name in failure.logs:
            path = cluster.log_path(name)
            self._write(f"  last lines of {path}:")
            for line in _tail(path):
                self._write(f"    {line}")
        self._write(f"  the daemons' logs: {self.root}/node-1.log … {self.victim}.log")

    def say(self, text: str) -> None:
        stamp = self._paint(f"[+{time.monotonic() - self.started:5.1f}s]", "2")
        self._write(f"{stamp} {text}")

    def _write(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def _paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def _bold(self, text: str) -> str:
        return self._paint(text, "1")

    def _status(self, status: str) -> str:
        return self._paint(status, _STATUS_COLOR[status]) if status in _STATUS_COLOR else status
