"""Files that ship with meshd for installs made with pip: unit, sysusers entry, example config.

``meshd --print-unit``, ``--print-sysusers`` and ``--print-example-config``
print them, because pip cannot install into /etc/systemd or /usr/lib.

One source of truth: each file has one copy, at the repository root
(``systemd/meshd.service``, ``systemd/meshd.sysusers.conf``,
``config/meshd.example.toml``), where packagers, the docs and the tests find
it. The wheel carries them as package data: ``force-include`` in
pyproject.toml copies them into ``meshd/data/`` of the wheel at build time.
So an installed meshd reads them next to this module, and a source checkout
(editable install, tests) reads them from the repository root. No copy in
the source tree can drift, and nothing has to be kept in sync by hand.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["FILES", "read_text"]

#: Name inside the package -> path in the source tree (relative to its root).
FILES = {
    "meshd.service": "systemd/meshd.service",
    "meshd.sysusers.conf": "systemd/meshd.sysusers.conf",
    "meshd.example.toml": "config/meshd.example.toml",
}


def read_text(name: str) -> str:
    """The text of the bundled file ``name`` (a key of :data:`FILES`).

    Args:
        name: ``meshd.service``, ``meshd.sysusers.conf`` or ``meshd.example.toml``.

    Returns:
        The file's content, exactly as in the source tree.

    Raises:
        KeyError: ``name`` is not a bundled file.
        FileNotFoundError: neither the installed copy nor the source tree's
            file exists (a wheel built without the force-include).
    """
    source = FILES[name]
    installed = resources.files(__name__).joinpath(name)
    if installed.is_file():
        return installed.read_text(encoding="utf-8")
    # A source checkout: meshd/data/__init__.py -> the repository root.
    checkout = Path(__file__).resolve().parent.parent.parent / source
    if checkout.is_file():
        return checkout.read_text(encoding="utf-8")
    raise FileNotFoundError(
        f"{name} is missing from this meshd installation (looked in {installed} and "
        f"{checkout}); reinstall meshd from a wheel built by hatchling"
    )
