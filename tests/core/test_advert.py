"""The mDNS advertisement: TXT layout, parsing of hostile input, the join check."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core.advert import (
    INCOMPATIBLE,
    OTHER_CLUSTER,
    OTHER_KEY,
    SELF,
    Advert,
    BadAdvert,
    check_advert,
    decode_advert,
    encode_txt,
    instance_name,
    server_name,
)

FP = "0123456789abcdef"
AD = Advert(
    node_id="web-1",
    cluster="prod",
    key_fingerprint=FP,
    address=("10.0.0.5", 7946),
    stream_port=7947,
)


def as_zeroconf(txt: dict[str, str]) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in txt.items()}


def test_txt_layout_is_as_specified() -> None:
    assert encode_txt(AD) == {
        "txtvers": "1",
        "proto": "1-1",
        "cluster": "prod",
        "key": FP,
        "id": "web-1",
        "port": "7946",
        "stream": "7947",
    }


def test_round_trip() -> None:
    assert decode_advert(as_zeroconf(encode_txt(AD)), ["10.0.0.5"]) == AD


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"txtvers": "2"}, "TXT version 2"),
        ({"proto": "1"}, "not MIN-MAX"),
        ({"proto": "3-1"}, "not a version range"),
        ({"key": "zz"}, "16-digit hex"),
        ({"port": "70000"}, "'port'"),
        ({"stream": "x"}, "'stream'"),
        ({"id": ""}, "'id' is missing"),
        ({"cluster": ""}, "'cluster' is missing"),
    ],
)
def test_malformed_fields_are_named(change: dict[str, str], message: str) -> None:
    txt = {**encode_txt(AD), **change}
    with pytest.raises(BadAdvert, match=message):
        decode_advert(as_zeroconf(txt), ["10.0.0.5"])


def test_unusable_addresses_are_skipped() -> None:
    ad = decode_advert(as_zeroconf(encode_txt(AD)), ["0.0.0.0", "fe80::1", "nonsense", "10.0.0.9"])
    assert ad.address == ("10.0.0.9", 7946)
    with pytest.raises(BadAdvert, match="no usable address"):
        decode_advert(as_zeroconf(encode_txt(AD)), ["224.0.0.251"])


@given(
    st.dictionaries(st.binary(max_size=12), st.one_of(st.none(), st.binary(max_size=40))),
    st.lists(st.text(max_size=20), max_size=3),
)
def test_garbage_only_raises_bad_advert(props: dict[bytes, bytes | None], addrs: list[str]) -> None:
    try:
        decode_advert(props, addrs)
    except BadAdvert:
        pass


def test_check_accepts_a_peer_of_the_same_mesh() -> None:
    assert check_advert(AD, node_id="web-2", cluster="prod", fingerprints=[FP]) is None


def test_check_accepts_a_peer_whose_primary_key_we_hold_as_secondary() -> None:
    assert check_advert(AD, node_id="web-2", cluster="prod", fingerprints=["f" * 16, FP]) is None


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"node_id": "web-1"}, SELF),
        ({"node_id": "web-1", "cluster": "staging"}, OTHER_CLUSTER),
        ({"node_id": "web-1", "fingerprints": ["f" * 16]}, OTHER_KEY),
        ({"cluster": "staging"}, OTHER_CLUSTER),
        ({"fingerprints": ["f" * 16]}, OTHER_KEY),
        ({"protocol_min": 2, "protocol_max": 3}, INCOMPATIBLE),
    ],
)
def test_check_rejects(kwargs: dict[str, object], reason: str) -> None:
    args: dict[str, object] = {"node_id": "web-2", "cluster": "prod", "fingerprints": [FP]}
    args.update(kwargs)
    assert check_advert(AD, **args) == reason  # type: ignore[arg-type]


def test_instance_names_fit_a_dns_label_and_stay_distinct() -> None:
    here, there = ("10.0.0.5", 7946), ("10.0.0.6", 7946)
    name = instance_name("web-1", "prod", here)
    assert name.startswith("web-1@prod-")
    assert name != instance_name("web-1", "prod", there)  # same id in two meshes
    long_a = instance_name("n" * 100 + "a", "prod", here)
    long_b = instance_name("n" * 100 + "b", "prod", here)
    assert len(long_a.encode()) <= 63 and len(long_b.encode()) <= 63
    assert long_a != long_b


def test_server_names_differ_per_node_and_address() -> None:
    a = server_name("web-1", "prod", ("10.0.0.5", 7946))
    assert a.endswith(".local.") and a.startswith("meshd-")
    assert a != server_name("web-2", "prod", ("10.0.0.5", 7946))
    assert a != server_name("web-1", "prod", ("10.0.0.6", 7946))
