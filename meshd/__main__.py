"""``python -m meshd``: the ``meshd`` command."""

from meshd.cli.daemon import run

run()
