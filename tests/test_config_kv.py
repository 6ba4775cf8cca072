"""``[kv]`` in the configuration file: defaults, values, and errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd.config import KvSection, generate_secret, load_config
from meshd.errors import ConfigError


def write(directory: Path, kv: str) -> Path:
    (directory / "secret").write_text(generate_secret() + "\n")
    (directory / "secret").chmod(0o600)
    path = directory / "meshd.toml"
    path.write_text(f'[cluster]\nsecret_file = "secret"\n\n[kv]\n{kv}\n')
    return path


def test_kv_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), environ={})
    assert config.kv == KvSection()
    kv = config.kv
    assert (kv.replicas, kv.consistency, kv.hint_window) == (3, "quorum", 10800)
    assert config.kv.tombstone_grace > config.kv.hint_window


def test_kv_values_are_read(tmp_path: Path) -> None:
    text = "\n".join(
        [
            "replicas = 5",
            'consistency = "ALL"',
            "timeout = 1",
            "hinted_handoff = false",
            "sloppy_quorum = true",
            "hint_window = 60",
            "tombstone_grace = 120.5",
            "anti_entropy_interval = 2",
            "anti_entropy_rate = 4096",
            "handoff_rate = 8192",
            "max_clock_drift = 0",
            'synchronous = "normal"',
        ]
    )
    kv = load_config(write(tmp_path, text), environ={}).kv
    assert kv == KvSection(
        replicas=5,
        consistency="all",
        timeout=1.0,
        hinted_handoff=False,
        sloppy_quorum=True,
        hint_window=60.0,
        tombstone_grace=120.5,
        anti_entropy_interval=2.0,
        anti_entropy_rate=4096,
        handoff_rate=8192,
        max_clock_drift=0.0,
        synchronous="normal",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("replicas = 0", "[kv] replicas must be 1..16"),
        ("replicas = 2.5", "[kv] replicas must be an integer"),
        ('consistency = "most"', "[kv] consistency = 'most' is not one of one, quorum, all"),
        ("timeout = 0", "[kv] timeout must be > 0 seconds"),
        ("max_clock_drift = -1", "[kv] max_clock_drift must be >= 0 seconds"),
        ("anti_entropy_rate = 10", "[kv] anti_entropy_rate must be at least 1024"),
        ('synchronous = "off"', "[kv] synchronous = 'off' is not one of full, normal"),
        ("hinted_handoff = 1", "[kv] hinted_handoff must be true or false"),
        (
            "hint_window = 100\ntombstone_grace = 100",
            "[kv] tombstone_grace (100 s) must be longer than hint_window (100 s)",
        ),
        ("replica = 3", "unknown key [kv] replica (did you mean 'replicas'?)"),
    ],
)
def test_kv_bad_values_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert expected in str(info.value)
    assert "\n" not in str(info.value)
