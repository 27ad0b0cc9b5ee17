"""What ``benchmarks/RESULTS.md`` shows of each benchmark's JSON: one module per benchmark.

Each module here is named after its script (``benchmarks/<name>.py``) and holds ``render(result)
-> str``, the Markdown section of that script's JSON (its tables and the targets it is judged
by), and, where the script draws no plot of its own, ``plot(result, folder)``, which draws
``<name>.png``. Both are pure functions of the JSON: ``run_all.py --render-only`` draws and writes
everything again from the stored results, and the tests render the committed ones.

* :mod:`.tables` -- the figures and tables every section is made of, and :func:`.tables.generic`
  for a benchmark without a section of its own (its top-level figures);
* :mod:`.plots` -- a matplotlib figure and how it is saved;
* :mod:`.page` -- the whole page: the machine, the summary, then each benchmark's section.

Nothing here imports the project or the benchmarks: a report reads JSON, it measures nothing.
"""
