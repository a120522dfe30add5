"""shelfsync's benchmarks: measurements of the promises (docs/BENCHMARKS.md), not tests.

One module per benchmark (bench/<name>.py, defining BENCHMARK, listed in bench.registry). Each run
writes its section to bench/results/<name>.md; `python -m bench report` assembles those sections
into docs/BENCHMARKS.md, so no number there is ever typed by hand.
"""
