"""Table tests for meshd.core.config: memberlist values in the profiles, clear errors."""

from __future__ import annotations

import re
from typing import Any

import attrs
import pytest

from meshd.core.config import PROFILES, MembershipConfig, profile
from meshd.errors import ConfigError

# -- profile values -----------------------------------------------------------

# ANCHORS.md §1.3, memberlist config.go DefaultLANConfig / DefaultWANConfig /
# DefaultLocalConfig, in seconds: (field, memberlist name, lan, wan, local).
# UDPBufferSize (1400 B) is codec.PACKET_MAX, not a membership knob.
MEMBERLIST_DEFAULTS = [
    ("probe_interval", "ProbeInterval", 1.0, 5.0, 1.0),
    ("probe_timeout", "ProbeTimeout", 0.5, 3.0, 0.2),
    ("gossip_interval", "GossipInterval", 0.2, 0.5, 0.1),
    ("gossip_nodes", "GossipNodes", 3, 4, 3),
    ("suspicion_mult", "SuspicionMult", 4, 6, 3),
    ("suspicion_max_timeout_mult", "SuspicionMaxTimeoutMult", 6, 6, 6),
    ("retransmit_mult", "RetransmitMult", 4, 4, 2),
    ("push_pull_interval", "PushPullInterval", 30.0, 60.0, 15.0),
    ("awareness_max_multiplier", "AwarenessMaxMultiplier", 8, 8, 8),
    ("tcp_timeout", "TCPTimeout", 10.0, 30.0, 1.0),
    ("indirect_checks", "IndirectChecks", 3, 3, 1),
    ("gossip_to_the_dead_time", "GossipToTheDeadTime", 30.0, 60.0, 15.0),
    # memberlist MetaMaxSize (512 B, same in every profile).
    ("meta_max_size", "MetaMaxSize", 512, 512, 512),
    # memberlist DisableTcpPings = false: TCP fallback pings on.
    ("tcp_fallback_ping", "!DisableTcpPings", True, True, True),
]

# meshd's own knob: floor of the adaptive escalation timeout (timing.escalation_timeout).
MESHD_DEFAULTS = [
    ("probe_timeout_min", "-", 0.05, 0.3, 0.02),
]

PROFILE_CASES = [
    pytest.param(field, name, value, id=f"{name}-{field}")
    for field, _, lan, wan, local in MEMBERLIST_DEFAULTS + MESHD_DEFAULTS
    for name, value in (("lan", lan), ("wan", wan), ("local", local))
]


@pytest.mark.parametrize(("field", "name", "expected"), PROFILE_CASES)
def test_config_profile_value(field: str, name: str, expected: object) -> None:
    got = getattr(profile(name), field)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize("name", ["lan", "wan", "local"])
def test_config_profile_name_and_constructor_agree(name: str) -> None:
    cfg = profile(name)
    assert cfg.profile == name
    assert cfg == getattr(MembershipConfig, name)()
    assert cfg == PROFILES[name]()


def test_config_lan_is_the_default_constructor() -> None:
    assert MembershipConfig() == MembershipConfig.lan()


@pytest.mark.parametrize("name", ["wan", "local"])
def test_config_profiles_inherit_the_rest_from_lan(name: str) -> None:
    # memberlist: WAN and Local start from DefaultLANConfig and override a
    # few fields; everything not in the override tables above is LAN's.
    overridden = {f for f, *_ in MEMBERLIST_DEFAULTS + MESHD_DEFAULTS} | {"profile"}
    lan, other = MembershipConfig.lan(), profile(name)
    for a in attrs.fields(MembershipConfig):
        if a.name not in overridden:
            assert getattr(other, a.name) == getattr(lan, a.name), a.name


@pytest.mark.parametrize("name", ["lan", "wan", "local"])
def test_config_profiles_satisfy_their_own_cross_checks(name: str) -> None:
    cfg = profile(name)
    assert cfg.probe_timeout_min <= cfg.probe_timeout < cfg.probe_interval


# -- unknown profile ----------------------------------------------------------


@pytest.mark.parametrize("name", ["nope", "", "LAN", "lan "])
def test_config_unknown_profile_names_the_valid_ones(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        profile(name)
    message = str(info.value)
    assert "membership.profile" in message
    for valid in ("lan", "wan", "local"):
        assert valid in message
    assert repr(name) in message


# -- bad values ---------------------------------------------------------------

# (overrides on top of LAN, the field the message must name). Every message
# must name the field as ``membership.<field>`` so an operator can find it in
# the config file.
BAD_VALUES = [
    # Intervals and timeouts that must be > 0.
    ({"probe_interval": -1.0}, "probe_interval"),
    ({"probe_interval": 0.0}, "probe_interval"),
    ({"probe_timeout": -0.5}, "probe_timeout"),
    ({"probe_timeout_min": -0.05}, "probe_timeout_min"),
    ({"probe_timeout_min": 0.0}, "probe_timeout_min"),
    ({"gossip_interval": -0.2}, "gossip_interval"),
    ({"gossip_interval": 0.0}, "gossip_interval"),
    ({"tcp_timeout": -10.0}, "tcp_timeout"),
    ({"leave_timeout": -5.0}, "leave_timeout"),
    # Durations where 0 means "off" but negative is nonsense.
    ({"push_pull_interval": -30.0}, "push_pull_interval"),
    ({"gossip_to_the_dead_time": -1.0}, "gossip_to_the_dead_time"),
    ({"reap_timeout": -1.0}, "reap_timeout"),
    ({"reconnect_interval": -30.0}, "reconnect_interval"),
    ({"reconnect_timeout": -1.0}, "reconnect_timeout"),
    # Counts.
    ({"indirect_checks": -1}, "indirect_checks"),
    ({"gossip_nodes": 0}, "gossip_nodes"),
    ({"suspicion_mult": 0}, "suspicion_mult"),
    ({"suspicion_max_timeout_mult": 0}, "suspicion_max_timeout_mult"),
    ({"retransmit_mult": 0}, "retransmit_mult"),
    ({"awareness_max_multiplier": 0}, "awareness_max_multiplier"),
    # Cross-field checks.
    ({"probe_timeout_min": 0.6}, "probe_timeout_min"),  # > probe_timeout 0.5
    ({"probe_timeout": 1.0}, "probe_timeout"),  # == probe_interval: no time for ping-req
    ({"probe_timeout": 1.5}, "probe_timeout"),  # > probe_interval
    ({"probe_interval": 0.4}, "probe_timeout"),  # the interval shrank below the timeout
]


@pytest.mark.parametrize(("overrides", "field"), BAD_VALUES)
def test_config_bad_value_names_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"membership\.{re.escape(field)}\b"):
        attrs.evolve(MembershipConfig.lan(), **overrides)


def test_config_probe_timeout_min_above_probe_timeout_names_both() -> None:
    with pytest.raises(ConfigError) as info:
        attrs.evolve(MembershipConfig.lan(), probe_timeout_min=0.6)
    assert "membership.probe_timeout_min" in str(info.value)
    assert "membership.probe_timeout " in str(info.value)


@pytest.mark.parametrize("size", [1025, 4096, -1])
def test_config_meta_max_size_out_of_range_names_the_field(size: int) -> None:
    with pytest.raises(ConfigError, match=r"membership\.meta_max_size\b"):
        attrs.evolve(MembershipConfig.lan(), meta_max_size=size)


@pytest.mark.parametrize(
    "overrides",
    [
        {"meta_max_size": 0},
        {"meta_max_size": 1024},
        {"probe_timeout_min": 0.5},  # == probe_timeout: memberlist's fixed timeout
        {"indirect_checks": 0},  # no helpers: plain SWIM direct probes + TCP
        {"push_pull_interval": 0.0},  # periodic push-pull off
        {"reconnect_interval": 0.0},  # reconnecting off
        {"gossip_to_the_dead_time": 0.0},
        {"reap_timeout": 0.0},
    ],
)
def test_config_edge_values_are_accepted(overrides: dict[str, Any]) -> None:
    cfg = attrs.evolve(MembershipConfig.lan(), **overrides)
    for field, value in overrides.items():
        assert getattr(cfg, field) == value


def test_config_is_frozen() -> None:
    cfg = MembershipConfig.lan()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.probe_interval = 2.0  # type: ignore[misc]
