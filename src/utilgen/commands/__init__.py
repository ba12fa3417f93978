"""The commands that use runs without being part of one: ``utilgen demo``, ``compare``,
``efficiency``, ``train`` and ``eval``, and the worker pool that runs several runs at once.

The round engine, :mod:`utilgen.loop`, makes one run (``utilgen run``, ``utilgen feedback``,
``run --dry-run``). The modules here stand above it:

* ``compare``: several configs over several seeds, then one comparison;
* ``demo``: every strategy on the bundled datasets over 3 seeds, compared and reported;
* ``efficiency``: a finished run's accuracy against the synthetic samples it used;
* ``parallel``: worker processes that run the demo's and ``compare --jobs``'s runs;
* ``schedule``: the order they run in (jobs with prerequisites, longest path first);
* ``train_eval``: the task model on its own, outside a run.

The package is named for what the modules have in common: each is the body of a CLI command
(or, ``parallel`` and ``schedule``, the machinery two of them share) that ``cli`` calls after
parsing its arguments. ``studies`` would fit ``demo``, ``compare`` and ``efficiency`` but not
``train`` and ``eval``. The statistics and tables they write come from :mod:`utilgen.report`
(``comparison_stats``, ``efficiency_curves``).

Imports point one way: this package imports ``loop``, ``report`` and the packages below them;
only ``cli`` imports this package (``tests/test_module_names.py`` checks it).
"""
