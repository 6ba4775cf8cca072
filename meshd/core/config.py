"""Membership tuning: what each knob means, its unit, its formula and its cost.

The three profiles carry HashiCorp memberlist's defaults (``DefaultLANConfig``,
``DefaultWANConfig``, ``DefaultLocalConfig``); WAN and local are LAN plus a few
overrides, built with :func:`attrs.evolve`. Every formula that turns these
knobs into a timeout or a count lives in ``timing.py`` and nowhere else.
"""

from __future__ import annotations

import attrs

from meshd.errors import ConfigError

__all__ = ["PROFILES", "MembershipConfig", "profile"]


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ConfigError(f"membership.{attribute.name} must be > 0, got {value!r}")


def _at_least_one(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ConfigError(f"membership.{attribute.name} must be >= 1, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ConfigError(f"membership.{attribute.name} must be >= 0, got {value!r}")


def _meta_size(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    # The codec accepts at most 1024 bytes of metadata in an alive message.
    if not 0 <= value <= 1024:
        raise ConfigError(f"membership.{attribute.name} must be 0..1024 bytes, got {value!r}")


@attrs.frozen(kw_only=True)
class MembershipConfig:
    """Tuning of failure detection and dissemination. Durations are float seconds.

    Start from :meth:`lan`, :meth:`wan` or :meth:`local` and override single
    fields with :func:`attrs.evolve`.
    """

    #: Name of the profile this config was derived from (informational).
    profile: str = "lan"

    #: Time between two probes of random members (SWIM protocol period).
    #: Lower detects failures sooner at the cost of one ping+ack per interval.
    #: Scaled by the local health multiplier (``timing.scaled_interval``).
    probe_interval: float = attrs.field(default=1.0, validator=_positive)

    #: How long to wait for a direct ack before asking ``indirect_checks``
    #: helpers. Set it near the 99th percentile of round-trip time: too low
    #: causes spurious indirect probes, too high delays detection.
    probe_timeout: float = attrs.field(default=0.5, validator=_positive)

    #: Floor of the adaptive escalation timeout. A probe escalates to
    #: ping-req and a TCP ping once the direct ack is overdue by the member's
    #: measured RTT (``srtt + 4 * rttvar``, RFC 6298), but never sooner than
    #: this and never later than ``probe_timeout``
    #: (``timing.escalation_timeout``). Escalating early only asks for more
    #: evidence; it costs ``2 * indirect_checks`` packets and one TCP connect.
    #: Set it equal to ``probe_timeout`` for memberlist's fixed timeout.
    probe_timeout_min: float = attrs.field(default=0.05, validator=_positive)

    #: Number of members asked to ping-req a target that missed a direct ping.
    #: More helpers lower the chance of a false suspicion under packet loss,
    #: at the cost of ``2 * indirect_checks`` extra packets per failed probe.
    indirect_checks: int = attrs.field(default=3, validator=_non_negative)

    #: Time between gossip rounds. Each round sends queued broadcasts to
    #: ``gossip_nodes`` random members; lower spreads updates faster and sends
    #: more packets. Nothing is sent when no broadcast is queued.
    gossip_interval: float = attrs.field(default=0.2, validator=_positive)

    #: Members gossiped to per round (fan-out).
    gossip_nodes: int = attrs.field(default=3, validator=_at_least_one)

    #: Dead members keep receiving gossip this long after they died, so a
    #: member wrongly declared dead learns it quickly and refutes.
    gossip_to_the_dead_time: float = attrs.field(default=30.0, validator=_non_negative)

    #: Multiplier of the minimum suspicion timeout:
    #: ``min = suspicion_mult * max(1, log10(N)) * probe_interval``.
    #: Higher tolerates slower refutation at the cost of slower detection.
    suspicion_mult: int = attrs.field(default=4, validator=_at_least_one)

    #: Lifeguard: the suspicion timer starts at ``suspicion_max_timeout_mult * min``
    #: and shrinks toward ``min`` as independent confirmations arrive.
    suspicion_max_timeout_mult: int = attrs.field(default=6, validator=_at_least_one)

    #: Each broadcast is sent ``retransmit_mult * ceil(log10(N + 1))`` times.
    #: Higher reaches every member with more certainty under loss, at the cost
    #: of bandwidth.
    retransmit_mult: int = attrs.field(default=4, validator=_at_least_one)

    #: Time between full-state (push-pull) exchanges with one random member;
    #: stretched above 32 members (``timing.push_pull_scale``). It repairs what
    #: gossip missed. Zero disables periodic push-pull (joins still use it).
    push_pull_interval: float = attrs.field(default=30.0, validator=_non_negative)

    #: Lifeguard local health: the probe interval is multiplied by
    #: ``score + 1`` with ``score`` in ``0 .. awareness_max_multiplier - 1``.
    awareness_max_multiplier: int = attrs.field(default=8, validator=_at_least_one)

    #: Deadline for a stream exchange (push-pull, join, keyring operation);
    #: the TCP fallback ping uses the rest of its protocol period instead.
    tcp_timeout: float = attrs.field(default=10.0, validator=_positive)

    #: Try a stream (TCP) ping in parallel with ping-req when the direct ping
    #: fails; tells "UDP is blocked" apart from "node is down".
    tcp_fallback_ping: bool = True

    #: Lifeguard refinements as a whole (local health, dynamic suspicion,
    #: nacks, buddy system). Off gives plain SWIM with suspicion; only useful
    #: to measure what Lifeguard buys.
    lifeguard: bool = True

    #: Dead and left members stay listed this long, then are reaped.
    reap_timeout: float = attrs.field(default=3600.0, validator=_non_negative)

    #: Every this often one dead, left or reaped address is tried again with a
    #: push-pull join, so the halves of a healed partition merge by themselves.
    #: Zero disables reconnecting.
    reconnect_interval: float = attrs.field(default=30.0, validator=_non_negative)

    #: Addresses of dead, left and reaped members are retried for this long.
    reconnect_timeout: float = attrs.field(default=86400.0, validator=_non_negative)

    #: A graceful leave waits at most this long for its leave notice to be
    #: sent the full retransmit count before reporting ``LeaveCompleted``.
    leave_timeout: float = attrs.field(default=5.0, validator=_positive)

    #: Cap on node metadata (tags), in bytes; bigger metadata is refused with
    #: a clear error, since it must fit in one alive message inside a packet.
    meta_max_size: int = attrs.field(default=512, validator=_meta_size)

    def __attrs_post_init__(self) -> None:
        if self.probe_timeout_min > self.probe_timeout:
            raise ConfigError(
                f"membership.probe_timeout_min ({self.probe_timeout_min}) must not exceed "
                f"membership.probe_timeout ({self.probe_timeout})"
            )
        if self.probe_timeout >= self.probe_interval:
            raise ConfigError(
                f"membership.probe_timeout ({self.probe_timeout}) must be shorter than "
                f"membership.probe_interval ({self.probe_interval}): indirect probes need "
                "the rest of the period"
            )

    @classmethod
    def lan(cls) -> MembershipConfig:
        """memberlist ``DefaultLANConfig``: one broadcast domain, RTT < 50 ms."""
        return cls()

    @classmethod
    def wan(cls) -> MembershipConfig:
        """memberlist ``DefaultWANConfig``: across data centres, higher RTT and loss."""
        return attrs.evolve(
            cls.lan(),
            profile="wan",
            probe_interval=5.0,
            probe_timeout=3.0,
            probe_timeout_min=0.3,
            gossip_interval=0.5,
            gossip_nodes=4,
            suspicion_mult=6,
            push_pull_interval=60.0,
            tcp_timeout=30.0,
            gossip_to_the_dead_time=60.0,
        )

    @classmethod
    def local(cls) -> MembershipConfig:
        """memberlist ``DefaultLocalConfig``: one host or a very fast network."""
        return attrs.evolve(
            cls.lan(),
            profile="local",
            probe_interval=1.0,
            probe_timeout=0.2,
            probe_timeout_min=0.02,
            gossip_interval=0.1,
            suspicion_mult=3,
            retransmit_mult=2,
            push_pull_interval=15.0,
            tcp_timeout=1.0,
            indirect_checks=1,
            gossip_to_the_dead_time=15.0,
        )


PROFILES = {"lan": MembershipConfig.lan, "wan": MembershipConfig.wan, "local": MembershipConfig.local}


def profile(name: str) -> MembershipConfig:
    """Return the named profile.

    Raises:
        ConfigError: ``name`` is not ``lan``, ``wan`` or ``local``.
    """
    try:
        return PROFILES[name]()
    except KeyError:
        raise ConfigError(
            f"membership.profile must be one of {', '.join(PROFILES)}, got {name!r}"
        ) from None
