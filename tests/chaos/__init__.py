"""The chaos run (issue 12): ddsync processes under kills, broker restarts, API faults and a
broken then fixed account; ``tests.chaos.harness`` runs it, ``python -m tests.chaos`` is
``make chaos``."""
