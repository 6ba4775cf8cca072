"""docs/plugins.md's tutorial, verbatim, on three real daemons.

The code blocks are taken from the page as they are: ``python tally.py``
becomes each node's ``plugins/tally.py``, ``toml meshd.toml`` is appended to
each node's configuration, and every ``$ meshctl ...`` line of the ``console
tutorial`` blocks runs (on every node for the reload, on node-1 otherwise)
and must print exactly the lines that follow it. The configuration error
shown in the ``text`` block is checked too.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from meshd.cli import meshctl
from meshd.config import load_config
from meshd.errors import ConfigError
from meshd.runtime.plugins import check_plugins
from meshd.testing.cluster import LocalCluster

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def blocks(info: str) -> list[str]:
    return [body for tag, body in FENCE.findall(DOC.read_text()) if tag.strip() == info]


def steps(console: str) -> list[tuple[str, list[str]]]:
    """``$ command`` lines and the output lines after each."""
    out: list[tuple[str, list[str]]] = []
    for line in console.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        else:
            out[-1][1].append(line)
    return out


def run(c: LocalCluster, node: str, command: str, capsys: pytest.CaptureFixture[str]) -> str:
    argv = shlex.split(command)
    assert argv[0] == "meshctl"
    capsys.readouterr()
    status = meshctl.main(["--socket", str(c.socket_path(node)), "--timeout", "20", *argv[1:]])
    out, err = capsys.readouterr()
    assert status == 0, f"{command} on {node}: exit {status}: {err}"
    return out


def test_the_tutorial_blocks_are_there() -> None:
    assert len(blocks("python tally.py")) == 1
    assert len(blocks("toml meshd.toml")) == 1
    assert len(blocks("console tutorial")) == 2


def test_tutorial_works(
    cluster: Callable[..., LocalCluster], capsys: pytest.CaptureFixture[str]
) -> None:
    [code] = blocks("python tally.py")
    [toml] = blocks("toml meshd.toml")
    reload, use = blocks("console tutorial")
    c = cluster(3)
    assert c.wait_until(c.converged, 20.0)

    # 1. and 2.: the file and the configuration, verbatim.
    for node in c.names:
        directory = c.configs[node].parent / "plugins"
        directory.mkdir()
        (directory / "tally.py").write_text(code)
        with c.configs[node].open("a") as f:
            f.write("\n" + toml)

    # 3.: reload on every node.
    [(command, expected)] = steps(reload)
    for node in c.names:
        assert run(c, node, command, capsys).splitlines() == expected

    def everyone_runs_tally() -> bool:
        members = c.request("node-1", "status")["members"]
        return all(m.get("plugins") == ["tally"] for m in members)

    assert c.wait_until(everyone_runs_tally, 10.0)

    # 4.: the calls on node-1 print exactly what the page shows.
    for command, expected in steps(use):
        assert run(c, "node-1", command, capsys).splitlines() == expected, command

    # What the page says the logs show.
    assert c.wait_until(
        lambda: all(
            "milestone from node-2: apples=2" in c.log_path(n).read_text() for n in c.names
        ),
        10.0,
    )
    assert c.log_path("node-2").read_text().count("node-2 counted apples (asked by node-1)") == 2
    assert "node-3 counted pears (asked by node-1)" in c.log_path("node-3").read_text()

    # 5.: the configuration error the page shows.
    [error] = [b for b in blocks("text") if "[plugins.tally]" in b]
    broken = c.configs["node-1"].parent / "broken.toml"
    shutil.copy(c.configs["node-1"], broken)
    broken.write_text(broken.read_text().replace("announce_every = 2", "announce_every = 0"))
    with pytest.raises(ConfigError) as info:
        check_plugins(load_config(broken))
    assert str(info.value) == error.strip().replace("/etc/meshd/meshd.toml", str(broken))
