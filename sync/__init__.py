"""The sync engine: journal (SQLite), scanners, planner (three-way reconcile), executor, watchers.

A **sync pair** joins two roots (a :class:`pool.locations.Location` each: an fsspec filesystem
and a root path). :func:`sync.engine.run_pair` scans both sides, diffs each against the pair's
journal, reconciles three ways (:mod:`sync.planner`), checks the safety limits, executes the plan
with parallel transfers (:mod:`sync.executor`) and commits the journal per file.

Imports point one way: ``sync`` imports ``pool`` only (never ``vfs`` or ``imaging``).
"""
