"""Sampler overhead benchmark -- now part of ``bench_speed.py``; this runs its sampler columns only
(forward ms at batch 1 and B, sampler time and overhead at S = L and S = 20, the speed-up).

    .venv/bin/python benchmarks/bench_sampler.py [--configs paper small] [--threads 2] [--device cpu]

Any ``bench_speed.py`` option is accepted (see ``bench_speed.py --help``).
"""

from __future__ import annotations

import sys

from bench_speed import main

if __name__ == "__main__":
    main(sys.argv[1:] + ["--slices", "0"])
