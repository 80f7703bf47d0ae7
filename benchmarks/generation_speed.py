"""Dataset generation throughput (transitions/s) per maze, in memory (no HDF5 writing).

    python benchmarks/generation_speed.py [--size 100000] [--workers 1 2]

Prints a table and writes benchmarks/results/generation_speed.json with the CPU model and core count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import datasets  # noqa: E402
from shared.utils import cpu_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "generation_speed.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--chunk-size", type=int, default=datasets.CHUNK_SIZE,
                        help="smaller chunks let several workers share a small benchmark size")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    datasets.CHUNK_SIZE = args.chunk_size
    load_before = os.getloadavg()[0]  # other processes on the machine skew the numbers: record it
    rows = []
    print(f"{'task':16s} {'workers':>7s} {'transitions':>11s} {'seconds':>8s} {'transitions/s':>13s} {'per CPU-s':>9s}")
    for task in ("maze2d-umaze", "maze2d-medium", "maze2d-large"):
        for workers in args.workers:
            start, cpu_start = time.perf_counter(), time.process_time()
            datasets.generate_arrays(task, size=args.size, seed=0, workers=workers, progress=False)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            # CPU time of this process is meaningful only without workers (they run in child processes)
            per_cpu_s = round(args.size / cpu_seconds, 1) if workers == 1 else None
            rows.append({"task": task, "workers": workers, "transitions": args.size, "seconds": round(seconds, 3),
                         "transitions_per_s": round(args.size / seconds, 1), "transitions_per_cpu_s": per_cpu_s})
            print(f"{task:16s} {workers:7d} {args.size:11d} {seconds:8.2f} {args.size / seconds:13.0f} "
                  f"{per_cpu_s or float('nan'):9.0f}", flush=True)

    payload = {
        "results": rows,
        "chunk_size": args.chunk_size,
        "cpu_model": cpu_model() or "unknown",
        "cpu_cores": os.cpu_count(),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "python": platform.python_version(),
        "versions": datasets.library_versions(),
        "note": "in-memory generation (simulation + controller), excluding HDF5 compression and writing; "
                "workers > 1 includes process start-up",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
