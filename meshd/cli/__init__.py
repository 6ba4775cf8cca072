"""Command-line entry points: ``meshd`` (the daemon) and ``meshctl`` (its control tool)."""
