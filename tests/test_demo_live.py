"""``meshd demo`` end to end: real daemons on 127.0.0.1, killed, detected, restarted, stopped."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from meshd.cli import demo


def _daemons_under(root: Path) -> list[str]:
    """Command lines of running processes that mention ``root`` (Linux /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(root) in text:
            found.append(text)
    return found


def _root(out: str) -> Path:
    match = re.search(r"--socket (\S+)/node-1/meshd\.sock status", out) or re.search(
        r"kept (\S+) ", out
    )
    assert match, out
    return Path(match.group(1))


def test_live_demo_tells_the_whole_story(capsys: pytest.CaptureFixture[str]) -> None:
    status = demo.main(["--nodes", "3", "--no-color"])
    out, err = capsys.readouterr()
    assert status == 0, out + err
    assert "\x1b[" not in out  # not a terminal, and --no-color

    # Phase 1: all three up and seeing each other alive, as meshctl status shows.
    assert "mesh: 3/3 nodes see all 3 alive" in out
    assert "mesh formed: every node sees all 3 alive" in out
    assert "Alive:3 / Suspect:0 / Dead:0 / Left:0" in out

    # Phase 2: SIGKILL of the last node, detected by both survivors.
    assert re.search(r"SIGKILL node-3 \(pid \d+\)", out)
    assert "node-3: dead 2/2" in out
    assert re.search(r"all 2 survivors see node-3 dead \d+\.\d s after the SIGKILL", out)
    assert "Alive:2 / Suspect:0 / Dead:1 / Left:0" in out
    assert re.search(r"^  D +node-3 ", out, re.MULTILINE)

    # Phase 3: it rejoins under the same id with a higher incarnation.
    match = re.search(r"node id node-3 unchanged, incarnation (\d+) -> (\d+)", out)
    assert match, out
    before, after = int(match.group(1)), int(match.group(2))
    assert after > before
    # Load is "--" or a size such as "0 B" or "3.7 KiB"; Owns is "--" or a percentage.
    load = r"(?:--|[\d.]+ [KMGTP]?i?B)"
    assert re.search(
        rf"^  A +node-3 +127\.0\.0\.1:\d+ +{load} +\S+ +{after} ", out, re.MULTILINE
    )
    assert out.count("Alive:3 / Suspect:0 / Dead:0 / Left:0") == 2

    # Phase 4: every daemon leaves gracefully and exits 0.
    for name in ("node-1", "node-2", "node-3"):
        assert re.search(rf"{name}: exit status 0 after \d+\.\d s", out)
    assert "2/2 remaining see it left" in out
    assert "all 3 daemons exited 0 after a graceful leave" in out
    assert "summary" in out
    assert "detection" in out

    # Nothing is left behind: no process, no temporary directory.
    root = _root(out)
    assert not root.exists()
    if Path("/proc/self").exists():
        assert _daemons_under(root) == []


def test_live_demo_failure_points_to_logs_and_cleans_up(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # No daemon answers its control socket within 50 ms of starting.
    status = demo.main(["--nodes", "2", "--no-color", "--timeout", "0.05"])
    out, _ = capsys.readouterr()
    root = _root(out)
    try:
        assert status == 1, out
        assert "FAILED: not every daemon opened its control socket within 0.05 s" in out
        assert re.search(r"last lines of \S+/node-\d\.log:", out)
        assert f"kept {root}" in out  # the logs stay for the operator
        if Path("/proc/self").exists():
            assert _daemons_under(root) == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize(
    "argv", [["--nodes", "1"], ["--nodes", "31"], ["--timeout", "0"], ["--bogus"]]
)
def test_live_demo_rejects_bad_arguments(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        demo.main(argv)
    assert exc.value.code == 2
    assert "meshd demo" in capsys.readouterr().err
