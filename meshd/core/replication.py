"""Replication rules: consistency levels, quorum accounting, and this node's view of the ring."""

# Strategy (Dynamo §4.5-4.6, Cassandra's consistency levels)
#
# Any node coordinates a request. It sends a write to every member of the
# key's preference list (ring.py) and answers once the consistency level is
# met; a read asks the list and answers with the newest record seen
# (versioned.py). This module holds the decisions, as pure state machines
# the runtime feeds with answers; the runtime (runtime/kv) does the sending.
#
# Rule 1: a level counts answers from the preference list: ONE needs 1,
#         QUORUM a majority, ALL every member. n is the list's length, i.e.
#         min(replicas, members): a mesh smaller than `replicas` still
#         serves QUORUM (a majority of what exists), as Riak's vnodes do.
# Rule 2: hints do not count (Cassandra), unless `sloppy` (Dynamo's sloppy
#         quorum). A hint is a promise to deliver later, kept on a node
#         outside the preference list, which a quorum read never asks: with
#         hints counted, R + W > N no longer guarantees that a read sees the
#         last acknowledged write. Not counting them means a write fails
#         when fewer than W replicas of its list answer, and says so.
# Rule 3: a failed level says what happened: how many were needed, how many
#         answered, and why each of the others did not (the runtime's
#         reason: "timeout", "not alive", the replica's refusal...).
# Rule 4: a read that found nothing keeps waiting while replicas are still
#         pending (Riak's notfound_ok = false). A new owner that has not yet
#         received its partitions answers "not found" first, because it is
#         idle; waiting for the others means a read during rebalancing, or
#         at ONE, does not mistake "not here yet" for "absent".
# Rule 5: while a ring change is being handed off, a read also asks the
#         previous owners ("extras"): they do not count toward the level but
#         their records take part in resolving the answer, so a key whose
#         partition is still on its way is found on the node it is leaving.

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping

import attrs

from meshd.core.ring import DEFAULT_PARTITION_BITS, DEFAULT_REPLICAS, Ring
from meshd.core.versioned import Record, RepairPlan, plan_read_repair

__all__ = [
    "DEFAULT_NAMESPACE",
    "Consistency",
    "ReadTally",
    "RingView",
    "WriteTally",
    "check_namespace",
    "parse_consistency",
    "required",
]

#: The namespace of operator data (``meshctl put/get/delete`` without ``--ns``).
DEFAULT_NAMESPACE = "default"

#: Namespaces a client may name: letters, digits, '.', '_', ':' and '-',
#: 1..64 characters, starting with a letter or digit. (The store itself takes
#: any 1..255 bytes of UTF-8; this is the stricter rule at the front door, so
#: names stay printable in logs and tables.)
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


class Consistency(enum.Enum):
    """How many replicas of the preference list must answer (Rule 1)."""

    ONE = "one"
    QUORUM = "quorum"
    ALL = "all"


def parse_consistency(text: object) -> Consistency:
    """The level named ``text`` (``"one"``, ``"quorum"`` or ``"all"``, any case).

    Raises:
        ValueError: anything else, naming the choices.
    """
    if isinstance(text, Consistency):
        return text
    if isinstance(text, str):
        try:
            return Consistency(text.lower())
        except ValueError:
            pass
    raise ValueError(f"consistency must be one, quorum or all, not {text!r}")


def required(consistency: Consistency, n: int) -> int:
    """Answers needed at ``consistency`` from a preference list of ``n`` (Rule 1)."""
    if n < 1:
        return 1
    if consistency is Consistency.ONE:
        return 1
    if consistency is Consistency.QUORUM:
        return n // 2 + 1
    return n


def check_namespace(name: object) -> str:
    """Refuse a namespace a client may not use; return it unchanged.

    Raises:
        ValueError: not a string of letters, digits, '.', '_', ':' or '-'
            (1..64, starting with a letter or digit).
    """
    if not isinstance(name, str) or not _NAMESPACE.fullmatch(name):
        raise ValueError(
            f"namespace {name!r} is not valid: use 1..64 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit"
        )
    return name


def _reasons(failed: Mapping[str, str], pending: Iterable[str], pending_reason: str) -> str:
    parts = [f"{m}: {why}" for m, why in failed.items()]
    parts += [f"{m}: {pending_reason}" for m in pending]
    return ", ".join(parts)


# ---------------------------------------------------------------------------
# Writes


@attrs.define(eq=False)
class WriteTally:
    """Acknowledgements of one write, and whether its level is met (Rules 1-3).

    Feed it every replica's outcome: :meth:`ack`, :meth:`fail`, and for a
    failed replica whose write went to a fallback, :meth:`hint_started`
    then :meth:`hint_stored` or :meth:`hint_failed`.

    Attributes:
        consistency: the level asked for.
        replicas: the preference list.
        sloppy: hints count toward the level (Dynamo) or not (Cassandra).
    """

    consistency: Consistency
    replicas: tuple[str, ...]
    sloppy: bool = False
    acked: list[str] = attrs.field(factory=list)
    failed: dict[str, str] = attrs.field(factory=dict)
    #: target replica -> node that holds its hint.
    hinted: dict[str, str] = attrs.field(factory=dict)
    _hinting: set[str] = attrs.field(factory=set)

    @property
    def needed(self) -> int:
        """Acknowledgements the level needs."""
        return required(self.consistency, len(self.replicas))

    @property
    def acks(self) -> int:
        """Acknowledgements that count: replicas, plus hints when sloppy."""
        return len(self.acked) + (len(self.hinted) if self.sloppy else 0)

    @property
    def pending(self) -> tuple[str, ...]:
        """Replicas that have neither acknowledged nor failed yet."""
        return tuple(m for m in self.replicas if m not in self.failed and m not in self.acked)

    def ack(self, replica: str) -> None:
        """``replica`` stored the write."""
        if replica not in self.acked:
            self.failed.pop(replica, None)
            self.acked.append(replica)

    def fail(self, replica: str, reason: str) -> None:
        """``replica`` did not store it; ``reason`` goes into the error message."""
        if replica not in self.acked:
            self.failed[replica] = reason

    def hint_started(self, target: str) -> None:
        """A hint for ``target`` is on its way to a fallback."""
        self._hinting.add(target)

    def hint_stored(self, target: str, holder: str) -> None:
        """``holder`` keeps the write as a hint for ``target``."""
        self._hinting.discard(target)
        self.hinted[target] = holder

    def hint_failed(self, target: str) -> None:
        """No node took the hint for ``target``."""
        self._hinting.discard(target)

    @property
    def succeeded(self) -> bool:
        """The level is met."""
        return self.acks >= self.needed

    @property
    def decided(self) -> bool:
        """Met, or impossible to meet whatever the pending replicas do."""
        if self.succeeded:
            return True
        possible = len(self.acked) + len(self.pending)
        if self.sloppy:
            possible += len(self.hinted) + len(self._hinting - set(self.hinted))
        return possible < self.needed

    def error(self, pending_reason: str = "timeout") -> str:
        """Why the level was not met, e.g. "quorum needs 2 of 3 replicas, 1 answered (...)"."""
        level = self.consistency.value
        text = (
            f"{level} needs {self.needed} of {len(self.replicas)} replica"
            f"{'s' if len(self.replicas) != 1 else ''}, {len(self.acked)} answered"
        )
        if self.sloppy and self.hinted:
            text += f" and {len(self.hinted)} hinted"
        reasons = _reasons(self.failed, self.pending, pending_reason)
        return f"{text} ({reasons})" if reasons else text


# ---------------------------------------------------------------------------
# Reads


@attrs.define(eq=False)
class ReadTally:
    """Answers to one read, and when to answer the client (Rules 1, 3, 4, 5).

    Attributes:
        consistency: the level asked for.
        replicas: the preference list.
        extras: previous owners asked during a handoff (Rule 5); they do
            not count toward the level.
    """

    consistency: Consistency
    replicas: tuple[str, ...]
    extras: tuple[str, ...] = ()
    answers: dict[str, Record | None] = attrs.field(factory=dict)
    extra_answers: dict[str, Record | None] = attrs.field(factory=dict)
    failed: dict[str, str] = attrs.field(factory=dict)

    @property
    def needed(self) -> int:
        """Answers from the preference list the level needs."""
        return required(self.consistency, len(self.replicas))

    def _pending(self, members: tuple[str, ...], answered: Mapping[str, object]) -> list[str]:
        return [m for m in members if m not in answered and m not in self.failed]

    @property
    def pending(self) -> list[str]:
        """Members of the preference list not heard from yet."""
        return self._pending(self.replicas, self.answers)

    @property
    def pending_extras(self) -> list[str]:
        """Previous owners not heard from yet."""
        return self._pending(self.extras, self.extra_answers)

    def answer(self, member: str, record: Record | None) -> None:
        """``member`` answered with what it holds (None: not found)."""
        if member in self.replicas:
            self.answers[member] = record
        else:
            self.extra_answers[member] = record

    def fail(self, member: str, reason: str) -> None:
        """``member`` did not answer; ``reason`` goes into the error message."""
        self.failed[member] = reason

    @property
    def found(self) -> bool:
        """Some member holds a record for the key (a tombstone counts)."""
        return any(r is not None for r in (*self.answers.values(), *self.extra_answers.values()))

    @property
    def can_answer(self) -> bool:
        """Enough of the preference list answered for the level."""
        return len(self.answers) >= self.needed

    @property
    def decided(self) -> bool:
        """Time to answer: the level is met and nothing worth waiting for is pending,
        or it can no longer be met."""
        if len(self.answers) + len(self.pending) < self.needed:
            return True
        if not self.can_answer or self.pending_extras:
            return False
        return self.found or not self.pending

    def plan(self) -> RepairPlan:
        """The winner among every answer so far, and the stale members of the list.

        Previous owners (extras) help pick the winner but are never repaired:
        they are about to drop the partition.
        """
        plan = plan_read_repair({**self.extra_answers, **self.answers})
        stale = tuple(m for m in plan.stale if m in self.answers)
        return RepairPlan(plan.winner, stale)

    def error(self, pending_reason: str = "timeout") -> str:
        """Why the level was not met (Rule 3)."""
        failed = {m: why for m, why in self.failed.items() if m in self.replicas}
        text = (
            f"{self.consistency.value} needs {self.needed} of {len(self.replicas)} replica"
            f"{'s' if len(self.replicas) != 1 else ''}, {len(self.answers)} answered"
        )
        reasons = _reasons(failed, self.pending, pending_reason)
        return f"{text} ({reasons})" if reasons else text


# ---------------------------------------------------------------------------
# This node's view of a ring


@attrs.frozen
class RingView:
    """A ring plus what one node derives from it once, off the event loop.

    Build with :meth:`build` (about as costly as ``Ring.build`` itself: one
    pass over the partitions).

    Attributes:
        ring: the placement.
        self_id: the node this view belongs to.
        owned: partitions ``self_id`` replicates.
        shared: peer -> partitions both it and ``self_id`` replicate, the
            set the two compare in anti-entropy.
        primary: member -> fraction of the keys it is the primary for (sums to 1).
        effective: member -> fraction of the keys it holds a replica of
            (Cassandra's "Owns (effective)"; sums to min(replicas, members)).
    """

    ring: Ring
    self_id: str
    owned: frozenset[int] = attrs.field(repr=False)
    shared: Mapping[str, tuple[int, ...]] = attrs.field(repr=False)
    primary: Mapping[str, float] = attrs.field(repr=False)
    effective: Mapping[str, float] = attrs.field(repr=False)

    @classmethod
    def build(
        cls,
        members: Iterable[str],
        self_id: str,
        *,
        replicas: int = DEFAULT_REPLICAS,
        partition_bits: int = DEFAULT_PARTITION_BITS,
    ) -> RingView:
        """Build the ring of ``members`` and this node's derived sets.

        Args:
            members: the ring's members (alive and suspect members of the
                node's view); order and duplicates do not matter.
            self_id: this node's id (need not be among ``members``).
            replicas: preference-list length.
            partition_bits: log2 of the partition count.
        """
        ring = Ring.build(members, replicas=replicas, partition_bits=partition_bits)
        owned: list[int] = []
        shared: dict[str, list[int]] = {}
        primary: dict[str, int] = dict.fromkeys(ring.members, 0)
        effective: dict[str, int] = dict.fromkeys(ring.members, 0)
        # Consecutive partitions mostly share one (interned) list: remember
        # the last one's facts instead of recomputing them.
        last: tuple[str, ...] | None = None
        mine = False
        peers: tuple[str, ...] = ()
        for p in ring.partitions():
            plist = ring.preference_list(p)
            if plist is not last:
                last = plist
                mine = self_id in plist
                peers = tuple(m for m in plist if m != self_id) if mine else ()
            if plist:
                primary[plist[0]] += 1
                for m in plist:
                    effective[m] += 1
            if mine:
                owned.append(p)
                for m in peers:
                    shared.setdefault(m, []).append(p)
        total = ring.partition_count
        return cls(
            ring,
            self_id,
            frozenset(owned),
            {m: tuple(ps) for m, ps in shared.items()},
            {m: c / total for m, c in primary.items()},
            {m: c / total for m, c in effective.items()},
        )

    def under_replicated(self, not_alive: Iterable[str]) -> int:
        """Partitions whose preference list includes one of ``not_alive`` (suspect members)."""
        down = set(not_alive) & set(self.ring.members)
        if not down:
            return 0
        count = 0
        last: tuple[str, ...] | None = None
        hit = False
        for p in self.ring.partitions():
            plist = self.ring.preference_list(p)
            if plist is not last:
                last = plist
                hit = any(m in down for m in plist)
            count += hit
        return count
