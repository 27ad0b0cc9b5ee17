"""Probes: scripts a person runs by hand to try an idea before it becomes a feature or a benchmark.

Each one runs on its own (``python benchmarks/probes/<name>.py``; its docstring says with what) and
prints what it measured; ``run_all.py`` lists them as run by hand and never runs them.
"""
