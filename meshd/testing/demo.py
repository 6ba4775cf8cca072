"""``meshd demo``: watch a simulated mesh form, catch a crash, heal and shrink.

The demo runs real :class:`~meshd.core.node.NodeCore` instances inside a
:class:`~meshd.testing.sim.SimNetwork` (LAN profile, no loss) and narrates a
short story:

1. ``node-1`` .. ``node-N`` start; every node but ``node-1`` joins through it.
2. ``node-N`` is killed (SIGKILL): the others suspect it, then declare it
   dead; the demo reports the detection time.
3. ``node-N`` restarts with empty state and rejoins through ``node-1``.
4. ``node-2`` leaves gracefully, then its process exits.
5. A summary: how long each step took, event counts, traffic.

A membership table shows, for every member, the state a majority of the
running nodes sees and how many of them agree. On a terminal it is redrawn in
place every virtual second; otherwise snapshots are printed after each step.

Pacing (``--speed``) is the only use of the wall clock, and only for
presentation; ``--speed 0`` runs as fast as possible (what tests use).
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from meshd.core.config import MembershipConfig
from meshd.core.outputs import LeaveCompleted, MemberFailed, MemberSuspected
from meshd.core.types import MemberState
from meshd.testing.sim import SimNetwork

if TYPE_CHECKING:
    from meshd.core.outputs import Event

__all__ = ["main"]

#: Virtual seconds between two steps of the story loop (and predicate checks).
_STEP = 0.1
#: Generous virtual-time limits per phase: a LAN mesh needs a fraction of these.
_FORM_TIMEOUT = 60.0
_DETECT_TIMEOUT = 120.0
_REJOIN_TIMEOUT = 60.0
_LEAVE_TIMEOUT = 30.0
#: Quiet virtual time between phases, so a watcher can read the table.
_PAUSE = 3.0

_STATE_COLOR = {
    MemberState.ALIVE: "32",  # green
    MemberState.SUSPECT: "33",  # yellow
    MemberState.DEAD: "31",  # red
    MemberState.LEFT: "34",  # blue
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshd demo",
        description=(
            "Run a simulated mesh on virtual time: nodes join, one is killed and "
            "detected, restarts and rejoins, another leaves gracefully."
        ),
    )
    parser.add_argument(
        "--nodes", type=int, default=5, metavar="N", help="number of nodes, 3..50 (default 5)"
    )
    parser.add_argument(
        "--seed", type=int, default=1, metavar="S", help="simulation seed (default 1)"
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=4.0,
        metavar="X",
        help="virtual seconds per wall second (default 4; 0 = as fast as possible)",
    )
    parser.add_argument("--no-color", action="store_true", help="plain text, no ANSI colours")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the demo.

    Args:
        argv: command-line arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        0 when every step converged in time, 1 otherwise.

    Raises:
        SystemExit: bad arguments (status 2) or ``--help`` (status 0), from argparse.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if not 3 <= args.nodes <= 50:
        parser.error(f"--nodes must be within 3..50, got {args.nodes}")
    if args.speed < 0:
        parser.error(f"--speed must be >= 0, got {args.speed}")
    out = sys.stdout
    tty = out.isatty()
    demo = _Demo(
        nodes=args.nodes,
        seed=args.seed,
        speed=args.speed,
        out=out,
        live=tty,
        color=tty and not args.no_color,
    )
    return demo.run()


def _natural_key(name: str) -> tuple[str, int]:
    match = re.fullmatch(r"(.*?)(\d+)", name)
    return (match.group(1), int(match.group(2))) if match else (name, -1)


class _Demo:
    """The story, its narration and its bookkeeping."""

    def __init__(
        self, *, nodes: int, seed: int, speed: float, out: TextIO, live: bool, color: bool
    ) -> None:
        self.n = nodes
        self.seed = seed
        self.speed = speed
        self.out = out
        self.live = live
        self.color = color
        self.names = [f"node-{i}" for i in range(1, nodes + 1)]
        self.victim = self.names[-1]
        self.leaver = "node-2"
        self.process = {name: "up" for name in self.names}
        self.net = SimNetwork(seed)
        self.counts: collections.Counter[str] = collections.Counter()
        self.notices: list[tuple[float, str]] = []
        self.crashed_at: float | None = None
        self.first_suspect: tuple[float, str] | None = None
        self.first_failed: tuple[float, str] | None = None
        self.leave_done_at: float | None = None
        self.results: dict[str, float] = {}
        self.table_lines = 0
        self.next_redraw = 0.0
        self.wall_start = time.perf_counter()
        self.pace_origin = (self.wall_start, 0.0)
        self.net.listeners.append(self._on_event)

    # ------------------------------------------------------------ story

    def run(self) -> int:
        net = self.net
        config = MembershipConfig.lan()
        self.say(
            f"meshd demo: {self.n} simulated nodes, seed {self.seed}, {config.profile} profile "
            f"(probe every {config.probe_interval:g} s, gossip every {config.gossip_interval:g} s)"
        )
        for name in self.names:
            net.add_node(name, config=config)
        first = net.node(self.names[0])
        self.say(f"{self.names[0]} starts at {first.address[0]}:{first.address[1]}")
        self.say(f"{self.names[1]}..{self.victim} join through {self.names[0]}")
        start = net.now
        for name in self.names[1:]:
            net.join(name, [self.names[0]])
        if not self.advance(net.converged, _FORM_TIMEOUT):
            return self.fail(f"the mesh did not form within {_FORM_TIMEOUT:g} virtual seconds")
        self.results["form"] = net.now - start
        self.say(f"mesh formed: all {self.n} nodes see each other alive after {self._dur('form')}")
        self.snapshot("mesh formed")
        self.advance(None, _PAUSE)

        # -- crash and detection
        self.say(f"simulating SIGKILL of {self.victim}")
        net.crash(self.victim)
        self.process[self.victim] = "killed"
        self.crashed_at = start = net.now
        if not self.advance(lambda: self._all_see(self.victim, MemberState.DEAD), _DETECT_TIMEOUT):
            return self.fail(
                f"{self.victim} was not declared dead by every node within "
                f"{_DETECT_TIMEOUT:g} virtual seconds"
            )
        self.results["agreed"] = net.now - start
        self.say(
            f"all {len(self._running())} running nodes agree {self.victim} is dead "
            f"after {self._dur('agreed')}"
        )
        self.snapshot(f"{self.victim} detected")
        self.advance(None, _PAUSE)

        # -- restart and rejoin
        self.say(
            f"restarting {self.victim}: fresh process, empty state, joins through {self.names[0]}"
        )
        start = net.now
        net.restart(self.victim, join_via=[self.names[0]])
        self.process[self.victim] = "up"
        if not self.advance(net.converged, _REJOIN_TIMEOUT):
            return self.fail(
                f"{self.victim} did not rejoin within {_REJOIN_TIMEOUT:g} virtual seconds"
            )
        self.results["rejoin"] = net.now - start
        incarnation = self._incarnation(self.victim)
        self.say(
            f"{self.victim} rejoined after {self._dur('rejoin')} "
            f"(incarnation {incarnation}: it refuted its own death)"
            if incarnation
            else f"{self.victim} rejoined after {self._dur('rejoin')}"
        )
        self.snapshot(f"{self.victim} rejoined")
        self.advance(None, _PAUSE)

        # -- graceful leave
        self.say(f"{self.leaver} leaves gracefully")
        start = net.now
        net.leave(self.leaver)
        if not self.advance(lambda: self.leave_done_at is not None, _LEAVE_TIMEOUT):
            return self.fail(
                f"{self.leaver} did not finish leaving within {_LEAVE_TIMEOUT:g} virtual seconds"
            )
        self.say(f"{self.leaver} finished its leave; its process exits")
        net.crash(self.leaver)
        self.process[self.leaver] = "stopped"
        if not self.advance(lambda: self._all_see(self.leaver, MemberState.LEFT), _LEAVE_TIMEOUT):
            return self.fail(
                f"not every node saw {self.leaver} as left "
                f"within {_LEAVE_TIMEOUT:g} virtual seconds"
            )
        self.results["leave"] = net.now - start
        self.say(
            f"all {len(self._running())} running nodes see {self.leaver} as left "
            f"after {self._dur('leave')}"
        )
        self.snapshot(f"{self.leaver} left")
        self.advance(None, 1.0)
        self.summary()
        return 0

    # ------------------------------------------------------------ time

    def advance(self, predicate: Callable[[], bool] | None, timeout: float) -> bool:
        """Run the simulation until ``predicate`` holds (None: for ``timeout``), paced."""
        net = self.net
        deadline = net.now + timeout
        while True:
            if predicate is not None and predicate():
                return True
            if net.now >= deadline - 1e-9:
                return predicate is None
            net.run_until(min(net.now + _STEP, deadline))
            self._flush_notices()
            if self.live and net.now >= self.next_redraw:
                self.next_redraw = net.now + 1.0
                self._redraw()
            self._pace()

    def _pace(self) -> None:
        if self.speed <= 0:
            return
        wall0, virtual0 = self.pace_origin
        target = wall0 + (self.net.now - virtual0) / self.speed
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        elif delay < -1.0:
            # Fell behind (slow terminal, big mesh): do not sprint to catch up.
            self.pace_origin = (time.perf_counter(), self.net.now)

    # ------------------------------------------------------------ observation

    def _on_event(self, now: float, observer: str, event: Event) -> None:
        self.counts[type(event).__name__] += 1
        if self.crashed_at is not None and now >= self.crashed_at:
            if isinstance(event, MemberSuspected) and event.member.node_id == self.victim:
                if self.first_suspect is None:
                    self.first_suspect = (now, observer)
                    self.notices.append(
                        (
                            now,
                            f"{observer} suspects {self.victim} "
                            f"({now - self.crashed_at:.1f} s after the crash)",
                        )
                    )
            elif isinstance(event, MemberFailed) and event.member.node_id == self.victim:
                if self.first_failed is None:
                    self.first_failed = (now, observer)
                    self.results["detect"] = now - self.crashed_at
                    self.notices.append(
                        (
                            now,
                            f"{event.accuser} declares {self.victim} dead: "
                            f"failure detected {now - self.crashed_at:.1f} s after the crash",
                        )
                    )
        if isinstance(event, LeaveCompleted) and observer == self.leaver:
            self.leave_done_at = now

    def _running(self) -> list[str]:
        return self.net.alive_nodes()

    def _all_see(self, member: str, state: MemberState) -> bool:
        return all(self.net.view(o).get(member) is state for o in self._running() if o != member)

    def _incarnation(self, member: str) -> int:
        core = self.net.node(member).core
        assert core is not None
        return max((m.incarnation for m in core.members() if m.node_id == member), default=0)

    def _rows(self) -> list[tuple[str, str, str, MemberState | None, int, str]]:
        """(node, address, process, majority state, incarnation, agrees) per member."""
        running = self._running()
        seen: dict[str, collections.Counter[MemberState]] = {}
        incarnations: dict[tuple[str, MemberState], int] = {}
        for observer in running:
            core = self.net.node(observer).core
            assert core is not None
            for m in core.members():
                seen.setdefault(m.node_id, collections.Counter())[m.state] += 1
                key = (m.node_id, m.state)
                incarnations[key] = max(incarnations.get(key, 0), m.incarnation)
        rows = []
        for name in sorted(set(seen) | set(self.names), key=_natural_key):
            node = self.net.node(name)
            votes = seen.get(name)
            if votes:
                # Majority; ties go to the later life-cycle state (suspect over alive).
                state, agree = max(votes.items(), key=lambda kv: (kv[1], kv[0]))
                inc = incarnations[(name, state)]
            else:
                state, agree, inc = None, 0, 0
            rows.append(
                (
                    name,
                    f"{node.address[0]}:{node.address[1]}",
                    self.process.get(name, "?"),
                    state,
                    inc,
                    f"{agree}/{len(running)}",
                )
            )
        return rows

    # ------------------------------------------------------------ output

    def _paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def _table(self, title: str) -> list[str]:
        rows = self._rows()
        header = ("NODE", "ADDRESS", "PROCESS", "STATE", "INC", "AGREES")
        cells = [
            (
                name,
                address,
                process,
                state.name.lower() if state is not None else "unknown",
                str(inc),
                agrees,
            )
            for name, address, process, state, inc, agrees in rows
        ]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]

        def line(
            values: tuple[str, ...], states: MemberState | None = None, head: bool = False
        ) -> str:
            parts = []
            for i, (value, width) in enumerate(zip(values, widths, strict=True)):
                padded = value.rjust(width) if i == 4 else value.ljust(width)
                if head:
                    padded = self._paint(padded, "1")
                elif i == 3 and states is not None:
                    padded = self._paint(padded, _STATE_COLOR[states])
                elif i == 2 and value != "up":
                    padded = self._paint(padded, "2")
                parts.append(padded)
            return "  " + "  ".join(parts).rstrip()

        lines = [
            self._paint(
                f"-- t={self.net.now:6.1f}s  {title}: state seen by the majority of "
                f"{len(self._running())} running nodes",
                "1",
            ),
            line(header, head=True),
        ]
        lines += [line(c, states=r[3]) for c, r in zip(cells, rows, strict=True)]
        return lines

    def _write(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def _erase_table(self) -> None:
        if self.live and self.table_lines:
            self.out.write(f"\x1b[{self.table_lines}A\r\x1b[J")
            self.table_lines = 0

    def _redraw(self, title: str = "live") -> None:
        self._erase_table()
        lines = self._table(title)
        self._write("\n".join(lines))
        self.table_lines = len(lines)

    def say(self, message: str, at: float | None = None) -> None:
        """One narration line, stamped with virtual time (above the live table)."""
        had_table = self.table_lines > 0
        self._erase_table()
        self._write(f"[t={self.net.now if at is None else at:6.1f}s] {message}")
        if had_table:
            self._redraw()

    def _flush_notices(self) -> None:
        notices, self.notices = self.notices, []
        for at, notice in notices:
            self.say(notice, at)

    def snapshot(self, title: str) -> None:
        """Show the table at a key moment (a live terminal just redraws it)."""
        if self.live:
            self._redraw(title)
        else:
            self._write("\n".join(self._table(title)))

    def fail(self, message: str) -> int:
        self._flush_notices()
        self.snapshot("when the demo gave up")
        print(f"meshd demo: {message} (seed {self.seed}); giving up", file=sys.stderr)
        return 1

    def _dur(self, key: str) -> str:
        value = self.results.get(key)
        return f"{value:.1f} s" if value is not None else "n/a"

    def summary(self) -> None:
        self.table_lines = 0  # leave the last table on screen
        total = self.net.stats.total
        wall = time.perf_counter() - self.wall_start
        suspect = (
            f"first suspected after {self.first_suspect[0] - self.crashed_at:.1f} s "
            f"(by {self.first_suspect[1]}), "
            if self.first_suspect is not None and self.crashed_at is not None
            else ""
        )
        lines = [
            self._paint("summary", "1"),
            f"  mesh of {self.n} nodes formed in {self._dur('form')}",
            f"  {self.victim} killed: {suspect}declared dead after {self._dur('detect')} "
            f"(detection time), all nodes agreed after {self._dur('agreed')}",
            f"  {self.victim} restarted and rejoined in {self._dur('rejoin')}",
            f"  {self.leaver} left gracefully; everyone saw it as left after {self._dur('leave')}",
            "  events: "
            + ", ".join(f"{name} {count}" for name, count in sorted(self.counts.items())),
            f"  traffic: {total.packets_sent} packets ({total.bytes_sent / 1000:.1f} kB), "
            f"{total.streams_opened} streams ({total.stream_bytes_sent / 1000:.1f} kB), "
            f"{total.packets_dropped} packets dropped (sent to dead processes)",
            f"  virtual time {self.net.now:.1f} s, wall time {wall:.2f} s, seed {self.seed}",
        ]
        self._write("\n".join(lines))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
