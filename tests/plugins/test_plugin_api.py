"""meshd.plugin_api on its own: the configuration schema, version checks, metrics, KV namespace."""

from __future__ import annotations

from typing import Any

import pytest

from meshd import plugin_api
from meshd.plugin_api import (
    ConfigInvalid,
    KVNamespace,
    KVUnavailable,
    ListOf,
    Metrics,
    Option,
    Plugin,
    Schema,
    api_compatible,
)

SCHEMA = Schema(
    {
        "name": Option(str, min=1, max=8),
        "port": Option(int, default=8080, min=1, max=65535),
        "ratio": Option(float, default=0.5),
        "debug": Option(bool, default=False),
        "mode": Option(str, default="fast", choices=["fast", "safe"]),
        "env": Option(dict, default={}),
        "tags": Option(ListOf(str), default=[]),
        "service": Option(
            ListOf(Schema({"name": Option(str), "port": Option(int, min=1)})), default=[]
        ),
        "limits": Option(Schema({"rate": Option(float, default=1.0)}), default={"rate": 1.0}),
    }
)


def test_Schema_fills_defaults_and_copies_them() -> None:
    a = SCHEMA.validate({"name": "web"})
    assert a == {
        "name": "web",
        "port": 8080,
        "ratio": 0.5,
        "debug": False,
        "mode": "fast",
        "env": {},
        "tags": [],
        "service": [],
        "limits": {"rate": 1.0},
    }
    a["tags"].append("x")
    assert SCHEMA.validate({"name": "web"})["tags"] == []  # defaults are copied


def test_Schema_accepts_nested_tables_and_lists() -> None:
    got = SCHEMA.validate(
        {
            "name": "web",
            "ratio": 2,  # an integer where a number goes
            "env": {"A": "1"},
            "tags": ["a", "b"],
            "service": [{"name": "db", "port": 5432}],
            "limits": {},
        }
    )
    assert got["ratio"] == 2.0
    assert isinstance(got["ratio"], float)
    assert got["service"] == [{"name": "db", "port": 5432}]
    assert got["limits"] == {"rate": 1.0}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, 'name: is required — add it, e.g. name = "text"'),
        ({"name": "web", "prot": 1}, "prot: unknown key (did you mean 'port'?) — valid keys here"),
        ({"name": 5}, 'name: must be a string, got integer 5 — write it like: name = "text"'),
        (
            {"name": "web", "port": "80"},
            "port: must be an integer, got string '80' — write it like: port = 8080",
        ),
        ({"name": "web", "port": True}, "port: must be an integer, got boolean True"),
        ({"name": "web", "port": 0}, "port: must be at least 1, got 0"),
        ({"name": "web", "port": 70000}, "port: must be at most 65535, got 70000"),
        ({"name": "toolongname"}, "name: must be at most 8 characters, got 11"),
        ({"name": ""}, "name: must be at least 1 characters, got 0"),
        ({"name": "web", "debug": "yes"}, "debug: must be true or false, got string 'yes'"),
        ({"name": "web", "mode": "slow"}, 'mode: = "slow" is not one of "fast", "safe"'),
        ({"name": "web", "ratio": float("inf")}, "ratio: must be a finite number"),
        ({"name": "web", "env": {"A": 1}}, "env: must be a table of strings"),
        ({"name": "web", "tags": "a"}, "tags: must be an array, got string 'a'"),
        ({"name": "web", "tags": ["a", 1]}, "tags[1]: must be a string, got integer 1"),
        ({"name": "web", "service": [{"name": "db"}]}, "service[0].port: is required"),
        (
            {"name": "web", "service": [{"name": "db", "port": 1, "tag": []}]},
            "service[0].tag: unknown key",
        ),
        (
            {"name": "web", "service": [{"name": "db", "port": 0}]},
            "service[0].port: must be at least 1",
        ),
        ({"name": "web", "limits": 3}, "limits: must be a table, got integer 3"),
        ({"name": "web", "limits": {"rate": "x"}}, "limits.rate: must be a number"),
    ],
)
def test_Schema_errors_name_the_key_and_say_what_to_do(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigInvalid) as info:
        SCHEMA.validate(raw)
    assert str(info.value).startswith(message), str(info.value)


def test_Schema_empty_refuses_every_key() -> None:
    with pytest.raises(ConfigInvalid, match="unknown key — valid keys here are: none"):
        Schema().validate({"x": 1})


@pytest.mark.parametrize(
    ("declared", "ok"),
    [
        ("1.0", True),
        (plugin_api.API_VERSION, True),
        ("1.1", False),  # newer minor: may use what this meshd lacks
        ("2.0", False),
        ("0.9", False),
        ("1", False),
        ("", False),
        (1.0, False),
        (None, False),
    ],
)
def test_api_compatible(declared: object, ok: bool) -> None:
    assert api_compatible(declared) is ok


def test_Metrics_counters_and_gauges() -> None:
    m = Metrics("p")
    c = m.counter("requests", "served")
    c.inc()
    c.inc(2)
    assert m.counter("requests") is c
    assert c.value == 3
    g = m.gauge("depth")
    g.set(5)
    g.dec()
    assert g.value == 4
    assert [x.name for x in m.all()] == ["depth", "requests"]
    with pytest.raises(ValueError, match="only goes up"):
        c.inc(-1)
    with pytest.raises(ValueError, match="is a counter"):
        m.gauge("requests")
    with pytest.raises(ValueError, match=r"use 1\.\.64"):
        m.counter("Bad-Name")


async def test_KVNamespace_without_a_store_says_so() -> None:
    kv = KVNamespace(None, "plugin:x")
    assert not kv.available
    for call in (kv.get("a"), kv.put("a", b"v"), kv.delete("a"), kv.scan()):
        with pytest.raises(KVUnavailable, match="without its replicated KV store"):
            await call


async def test_KVNamespace_passes_its_namespace_and_bytes() -> None:
    calls: list[tuple[Any, ...]] = []

    class Backend(plugin_api.KVBackend):
        async def get(self, namespace: str, key: bytes, *, consistency: Any) -> bytes | None:
            calls.append(("get", namespace, key, consistency))
            return b"v"

        async def put(self, namespace: str, key: bytes, value: bytes, *, consistency: Any) -> None:
            calls.append(("put", namespace, key, value, consistency))

        async def delete(self, namespace: str, key: bytes, *, consistency: Any) -> None:
            calls.append(("delete", namespace, key, consistency))

        async def scan(
            self, namespace: str, prefix: bytes, *, limit: int, consistency: Any
        ) -> list[tuple[bytes, bytes]]:
            calls.append(("scan", namespace, prefix, limit, consistency))
            return []

    kv = KVNamespace(Backend(), "plugin:x")
    assert await kv.get("k") == b"v"
    await kv.put(b"k", b"1", consistency="all")
    await kv.delete("k", consistency="one")
    await kv.scan("p", limit=5)
    assert calls == [
        ("get", "plugin:x", b"k", "quorum"),
        ("put", "plugin:x", b"k", b"1", "all"),
        ("delete", "plugin:x", b"k", "one"),
        ("scan", "plugin:x", b"p", 5, "one"),
    ]
    with pytest.raises(TypeError, match="KV values are bytes"):
        await kv.put("k", "text")  # type: ignore[arg-type]


async def test_Plugin_base_run_must_be_overridden() -> None:
    with pytest.raises(NotImplementedError, match="must implement async run"):
        await Plugin().run(None)  # type: ignore[arg-type]


def test_plugin_api_imports_no_trio_and_no_runtime() -> None:
    # Plugins import plugin_api; it must stay importable without the daemon.
    import ast
    from pathlib import Path

    tree = ast.parse(Path(plugin_api.__file__).read_text())
    imported = {
        (n.module if isinstance(n, ast.ImportFrom) else a.name)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in (n.names if isinstance(n, ast.Import) else [n])  # type: ignore[attr-defined]
    }
    assert not {m for m in imported if m and (m.startswith("meshd.runtime") or m == "trio")}
