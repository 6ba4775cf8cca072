"""``meshd demo`` end to end: real cores in the simulator, as fast as possible."""

from __future__ import annotations

import re

import pytest

from meshd.testing import demo


def test_demo_tells_the_whole_story(capsys: pytest.CaptureFixture[str]) -> None:
    status = demo.main(["--nodes", "4", "--speed", "0", "--no-color"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "\x1b[" not in out  # not a terminal, and --no-color
    assert "mesh formed: all 4 nodes see each other alive" in out
    assert "simulating SIGKILL of node-4" in out
    assert re.search(r"suspects node-4 \(\d+\.\d s after the crash\)", out)
    assert re.search(r"declares node-4 dead: failure detected \d+\.\d s after the crash", out)
    assert re.search(r"node-4 rejoined after \d+\.\d s", out)
    assert "node-2 leaves gracefully" in out
    assert re.search(r"all 3 running nodes see node-2 as left", out)
    assert re.search(r"node-2 +\S+ +stopped +left", out)
    assert "summary" in out
    assert "detection time" in out


def test_demo_is_deterministic_for_a_seed(capsys: pytest.CaptureFixture[str]) -> None:
    def story() -> str:
        assert demo.main(["--nodes", "3", "--seed", "5", "--speed", "0", "--no-color"]) == 0
        out = capsys.readouterr().out
        return re.sub(r"wall time \S+ s", "wall time X s", out)

    assert story() == story()


@pytest.mark.parametrize("argv", [["--nodes", "2"], ["--nodes", "51"], ["--speed", "-1"]])
def test_demo_rejects_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        demo.main(argv)
    assert exc.value.code == 2
    assert "demo" in capsys.readouterr().err
