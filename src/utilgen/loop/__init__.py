"""The round engine: one run (``utilgen run``), its rounds, feedback and stopping rules.

Commands built on runs (``demo``, ``compare``, ``efficiency``, ``train``, ``eval``, several
runs at once) are in :mod:`utilgen.commands`, which imports this package, never the reverse.
"""
