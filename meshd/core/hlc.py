"""Hybrid logical clock: timestamps near wall time that never run backwards or lose causality."""

# Strategy
#
# Last-writer-wins needs one total order of writes that every replica
# agrees on, and that puts a write after every write its coordinator had
# already seen. Wall clocks alone fail the second rule (skew, NTP steps);
# Lamport clocks fail to stay near real time, which the tombstone grace
# period and the operator both need. Kulkarni, Demirbas et al., "Logical
# Physical Clocks and Consistent Snapshots in Globally Distributed
# Databases" (OPODIS 2014) combine the two: a timestamp is (l, c) where l is
# the largest wall time seen (ms here) and c counts events within the same l.
#
# Their algorithm (Fig. 5), with pt the local physical time:
#
#   send / local:  l' = l;  l = max(l', pt)
#                  c  = c + 1 if l == l' else 0
#   receive m:     l' = l;  l = max(l', m.l, pt)
#                  c  = max(c, m.c) + 1   if l == l' == m.l
#                       c + 1             if l == l'
#                       m.c + 1           if l == m.l
#                       0                 otherwise
#
# Packing (l, c) into one integer P = l << LOGICAL_BITS | c turns both rules
# into a single max, which is what this file does:
#
#   send / local:  P = max(P + 1, pt << LOGICAL_BITS)
#   receive m:     P = max(P + 1, m.P + 1, pt << LOGICAL_BITS)
#
# (each case of the table above is one argument of the max winning). The
# packed form is also what storage keeps: one SQLite INTEGER that sorts in
# timestamp order.
#
# Rule 1: the physical time is an argument. The core never reads a clock;
#         the runtime passes milliseconds since the Unix epoch.
# Rule 2: a clock's timestamps strictly increase, whatever pt does. If pt
#         steps back, l stays and c counts on.
# Rule 3: a remote timestamp more than max_drift_ms ahead of our physical
#         time is refused (ClockDriftError) and does not move the clock.
#         Without this bound one node with a clock a day fast would drag
#         every clock it talks to a day ahead, and its writes would win LWW
#         against anything written during that day (HLC paper §3, epsilon).
# Rule 4: c has LOGICAL_BITS bits. More than 65535 events within one ms of
#         the same l carry into l (l moves ahead of wall time by 1 ms),
#         which keeps Rule 2; Rule 3 bounds how far that can go in practice.
#
# Ties: two writers can produce the same (l, c). Version (timestamp, then
# writer id) breaks them, so the LWW order is total and the same on every
# replica.

from __future__ import annotations

import attrs

from meshd.errors import RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_DRIFT_MS",
    "LOGICAL_BITS",
    "ZERO",
    "ClockDriftError",
    "HybridClock",
    "Timestamp",
    "Version",
]

#: Bits of the logical counter c in a packed timestamp.
LOGICAL_BITS = 16
_LOGICAL_MASK = (1 << LOGICAL_BITS) - 1
#: Packed timestamps fit SQLite's signed 64-bit INTEGER: l < 2**47 ms (year 6429).
_PACKED_LIMIT = 1 << 63
#: How far ahead of our wall clock a peer's timestamp may be, in ms. A LAN
#: with NTP stays within tens of ms; 5 s tolerates a VM that missed a sync.
#: CockroachDB's equivalent (max offset) is 500 ms. Smaller protects LWW
#: from a fast clock better; larger rejects fewer writes.
DEFAULT_MAX_DRIFT_MS = 5_000


class ClockDriftError(RemoteProtocolError):
    """A peer's timestamp is further ahead of our clock than the drift bound allows."""


def _check_packed(_instance: object, _attribute: object, value: int) -> None:
    if not 0 <= value < _PACKED_LIMIT:
        raise ValueError(f"packed HLC timestamp out of range 0..2**63-1: {value}")


@attrs.frozen(order=True)
class Timestamp:
    """One HLC timestamp: wall milliseconds and a logical counter, packed in one integer.

    Ordered by the packed value, i.e. by ``(wall_ms, logical)``.

    Attributes:
        packed: ``wall_ms << LOGICAL_BITS | logical``; what storage and the wire carry.
    """

    packed: int = attrs.field(validator=_check_packed)

    @classmethod
    def of(cls, wall_ms: int, logical: int = 0) -> Timestamp:
        """The timestamp ``(wall_ms, logical)``.

        Raises:
            ValueError: if ``logical`` does not fit LOGICAL_BITS or the result is out of range.
        """
        if not 0 <= logical <= _LOGICAL_MASK:
            raise ValueError(f"logical counter out of range 0..{_LOGICAL_MASK}: {logical}")
        if wall_ms < 0:
            raise ValueError(f"wall_ms must be >= 0, got {wall_ms}")
        return cls(wall_ms << LOGICAL_BITS | logical)

    @property
    def wall_ms(self) -> int:
        """l: the largest wall time (ms since the epoch) that led to this timestamp."""
        return self.packed >> LOGICAL_BITS

    @property
    def logical(self) -> int:
        """c: events counted at the same ``wall_ms``."""
        return self.packed & _LOGICAL_MASK

    def __str__(self) -> str:
        return f"{self.wall_ms}.{self.logical:05d}"


#: The timestamp before every other one.
ZERO = Timestamp(0)


@attrs.frozen(order=True)
class Version:
    """A write's place in the last-writer-wins order: timestamp first, then writer id.

    The writer id breaks ties between two coordinators that produced the
    same timestamp, so every replica picks the same winner. Ids compare as
    Python strings (by code point), which is also the byte order of their
    UTF-8 encoding, so SQLite's BINARY collation agrees.

    Attributes:
        timestamp: the HLC timestamp of the write.
        writer: node id of the coordinator that stamped it.
    """

    timestamp: Timestamp
    writer: str


@attrs.define(eq=False)
class HybridClock:
    """One node's HLC: :meth:`now` stamps local events, :meth:`update` merges received ones.

    Attributes:
        max_drift_ms: how far ahead of our physical time a remote timestamp
            may be before :meth:`update` refuses it (Rule 3).
        last: the latest timestamp this clock issued or accepted.
    """

    max_drift_ms: int = attrs.field(default=DEFAULT_MAX_DRIFT_MS, validator=attrs.validators.ge(0))
    last: Timestamp = ZERO

    def now(self, physical_ms: int) -> Timestamp:
        """A timestamp for a local event or a send, later than every one before it.

        Args:
            physical_ms: the wall clock, milliseconds since the Unix epoch.

        Returns:
            The new timestamp (also stored as :attr:`last`).
        """
        self.last = Timestamp(max(self.last.packed + 1, physical_ms << LOGICAL_BITS))
        return self.last

    def update(self, remote: Timestamp, physical_ms: int) -> Timestamp:
        """Merge a timestamp received from a peer; the result is later than both.

        Args:
            remote: the timestamp the peer sent.
            physical_ms: the wall clock, milliseconds since the Unix epoch.

        Returns:
            The new timestamp (also stored as :attr:`last`).

        Raises:
            ClockDriftError: if ``remote`` is more than :attr:`max_drift_ms`
                ahead of ``physical_ms``; the clock is left unchanged.
        """
        ahead = remote.wall_ms - physical_ms
        if ahead > self.max_drift_ms:
            raise ClockDriftError(
                f"remote HLC timestamp {remote} is {ahead} ms ahead of the local clock "
                f"(max drift {self.max_drift_ms} ms); check NTP on both nodes"
            )
        self.last = Timestamp(
            max(self.last.packed + 1, remote.packed + 1, physical_ms << LOGICAL_BITS)
        )
        return self.last
