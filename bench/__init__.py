"""rwkv_cpp's benchmarks: programs, not tests, run from the repository root
as modules, e.g. ``python -m bench.bench_speed --smoke``.  bench.harness
holds what they share; bench.worker is the side that runs in the worker
processes; bench/RESULTS.md has the numbers."""
