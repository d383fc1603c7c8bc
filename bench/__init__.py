"""Benchmarks for jointstats: scaling, peers (pooled plaintext, row-sharing MPyC) and limits.

Run ``python -m bench --quick`` (under 2 minutes) or ``python -m bench --full``;
see ``bench/README.md``. Every benchmark runs the parties as real OS processes
on loopback and writes one JSON line per measurement.
"""
