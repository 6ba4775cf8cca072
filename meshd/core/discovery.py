"""Where members came from, and whom to try after a restart.

Two small mechanisms that the runtime drives, kept pure so that they can be
tested without sockets:

* **Discovery sources** (:class:`SourceBook`). The runtime asks the core to
  join addresses it learned from several places: mDNS, the configured
  seeds, the member snapshot, ``meshctl join``. When a member then appears,
  the book says which of them found it; a member nobody asked for arrived by
  gossip (another member told us). ``meshctl status`` shows this.

* **The member snapshot** (:class:`Snapshot`). The daemon keeps the members
  it knows, with their last state and when it last saw them alive, in its
  state directory. At start it tries them (:meth:`Snapshot.rejoin_candidates`)
  alongside the seeds, so a reboot of every host re-forms the mesh even
  without mDNS. Serf keeps a similar snapshot; unlike Serf, members that
  *left* are tried too, because a whole-mesh reboot is a graceful leave of
  every member.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from meshd.core.types import Address, Member, MemberState, NodeId

__all__ = ["SNAPSHOT_VERSION", "BadSnapshot", "Snapshot", "SnapshotEntry", "Source", "SourceBook"]

SNAPSHOT_VERSION = 1


class Source(enum.Enum):
    """How a member was first learned of in this run."""

    MDNS = "mdns"
    SEED = "seed"
    SNAPSHOT = "snapshot"
    JOIN = "join"  # meshctl join
    GOSSIP = "gossip"


class SourceBook:
    """Which discovery source found each member.

    The first *direct* source wins: a member found by mDNS and later also
    listed as a seed stays ``mdns``. Gossip is only a fallback label: a
    member first heard of through others (or that joined us) becomes
    ``mdns``, ``seed``, ... as soon as that source names it too.
    """

    def __init__(self) -> None:
        self._expected: dict[Address, Source] = {}
        self._sources: dict[NodeId, Source] = {}

    def expect(self, address: Address, source: Source) -> None:
        """A join to ``address`` found through ``source`` is on its way."""
        self._expected.setdefault(address, source)

    def joined(self, node_id: NodeId, address: Address) -> Source:
        """Record the appearance of ``node_id`` at ``address``; return its source."""
        known = self._sources.get(node_id)
        if known is not None and known is not Source.GOSSIP:
            return known
        source = self._expected.get(address, Source.GOSSIP)
        self._sources[node_id] = source
        return source

    def named(self, node_id: NodeId, source: Source) -> None:
        """``source`` names ``node_id`` directly (e.g. its mDNS advertisement)."""
        if self._sources.get(node_id) in (None, Source.GOSSIP):
            self._sources[node_id] = source

    def source(self, node_id: NodeId) -> Source | None:
        """The member's source, or None if it has not appeared."""
        return self._sources.get(node_id)

    def forget(self, node_id: NodeId) -> None:
        """The member was reaped: a later appearance is new."""
        self._sources.pop(node_id, None)

    def counts(self) -> dict[str, int]:
        """Members per source (for ``meshctl info``)."""
        counts = {s.value: 0 for s in Source}
        for source in self._sources.values():
            counts[source.value] += 1
        return counts


class BadSnapshot(ValueError):
    """The snapshot file's content is not a snapshot."""


@attrs.frozen
class SnapshotEntry:
    """One member as last known.

    Attributes:
        node_id: the member's id.
        address: its gossip address.
        state: its state when the snapshot was written.
        last_alive: wall-clock seconds (Unix time) when it was last seen
            alive, or 0.0 if never.
    """

    node_id: NodeId
    address: Address
    state: MemberState
    last_alive: float


@attrs.frozen
class Snapshot:
    """The members a node knew, as stored in ``<state dir>/members.json``."""

    entries: tuple[SnapshotEntry, ...] = ()

    @classmethod
    def of(
        cls,
        members: Iterable[Member],
        *,
        self_id: NodeId,
        now_wall: float,
        previous: Snapshot | None = None,
        keep_for: float = 86400.0,
    ) -> Snapshot:
        """A new snapshot from the current view.

        Members that are alive (or suspect: not yet known to be gone) get
        ``last_alive = now_wall``; the others keep the time from
        ``previous``. Members reaped since ``previous`` are kept with their
        old entry, so their addresses are still tried after a restart,
        until they have not been seen alive for ``keep_for`` seconds.
        """
        before = {e.node_id: e for e in (previous.entries if previous else ())}
        entries: dict[NodeId, SnapshotEntry] = {}
        for m in members:
            if m.node_id == self_id:
                continue
            old = before.get(m.node_id)
            if m.state in (MemberState.ALIVE, MemberState.SUSPECT):
                last_alive = now_wall
            else:
                last_alive = old.last_alive if old is not None else 0.0
            entries[m.node_id] = SnapshotEntry(m.node_id, m.address, m.state, last_alive)
        for node_id, old in before.items():
            if node_id not in entries and now_wall - old.last_alive <= keep_for:
                entries[node_id] = old
        return cls(tuple(sorted(entries.values(), key=lambda e: e.node_id)))

    def rejoin_candidates(
        self, *, now_wall: float, max_age: float, exclude: Iterable[Address] = ()
    ) -> list[Address]:
        """Addresses worth trying at start, most recently alive first.

        Entries not seen alive within ``max_age`` seconds are dropped (their
        hosts are probably gone for good).
        """
        skip = set(exclude)
        recent = [
            e
            for e in self.entries
            if e.last_alive > 0 and now_wall - e.last_alive <= max_age and e.address not in skip
        ]
        recent.sort(key=lambda e: -e.last_alive)
        seen: set[Address] = set()
        out: list[Address] = []
        for e in recent:
            if e.address not in seen:
                seen.add(e.address)
                out.append(e.address)
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready document."""
        return {
            "v": SNAPSHOT_VERSION,
            "members": [
                {
                    "id": e.node_id,
                    "host": e.address[0],
                    "port": e.address[1],
                    "state": e.state.name.lower(),
                    "last_alive": e.last_alive,
                }
                for e in self.entries
            ],
        }

    @classmethod
    def from_json(cls, document: object) -> Snapshot:
        """Parse what :meth:`to_json` wrote.

        Raises:
            BadSnapshot: not a version-1 snapshot; the message says what is wrong.
        """
        if not isinstance(document, Mapping) or document.get("v") != SNAPSHOT_VERSION:
            raise BadSnapshot(f"not a version {SNAPSHOT_VERSION} member snapshot")
        members = document.get("members")
        if not isinstance(members, Sequence):
            raise BadSnapshot("'members' is not a list")
        entries = []
        for item in members:
            try:
                entries.append(
                    SnapshotEntry(
                        NodeId(_text(item["id"])),
                        (_text(item["host"]), _port(item["port"])),
                        MemberState[_text(item["state"]).upper()],
                        float(item["last_alive"]),
                    )
                )
            except (KeyError, TypeError, ValueError) as e:
                raise BadSnapshot(f"bad member entry {item!r}: {e}") from None
        return cls(tuple(entries))


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _port(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise ValueError("expected a port number")
    return value
