"""The ``medseg-bench`` benchmark runner (installed as ``medseg_bench``).

``run_benchmark(BenchConfig(...), out_dir)`` runs (or resumes) a benchmark and writes its
results; ``medseg-bench`` is the command line (``medseg_bench.cli``).
"""

from .config import BenchConfig, BenchError, episode_seed
from .runner import BenchResult, run_benchmark

__all__ = ["BenchConfig", "BenchError", "BenchResult", "episode_seed", "run_benchmark"]
