"""Print the generation cost of each workload in microseconds per request (no assertions; numbers to read).

    .venv/bin/python benchmarks/workload_gen.py [--num-requests N] [--rate RPS] [--arrival poisson] [--trace]
                                                [WORKLOAD ...]

WORKLOAD is a name or a full workload string (``gsp:num_groups=32``); the default is every registered workload.
The requests are consumed and dropped, as the simulator does, so memory stays flat. ``--trace`` also times
writing them to a JSONL trace and reading it back.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from schedctl.workloads import WORKLOADS, make_requests, read_trace, write_trace


def _trace_costs(workload: str, args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.jsonl"
        start = time.perf_counter()
        count = write_trace(path, make_requests(workload, args.rate, args.arrival, num_requests=args.num_requests,
                                                seed=args.seed))
        written_s = time.perf_counter()
        read = sum(1 for _ in read_trace(path))
        read_s = time.perf_counter()
        size = os.path.getsize(path)
    assert read == count
    return (f"    trace: write {(written_s - start) / count * 1e6:.1f} us/request, "
            f"read {(read_s - written_s) / count * 1e6:.1f} us/request, {size / count:.0f} bytes/request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", default=list(WORKLOADS))
    parser.add_argument("--num-requests", type=int, default=200_000)
    parser.add_argument("--rate", default="20", help="rate schedule (a number in requests/s, or KIND:...)")
    parser.add_argument("--arrival", default="poisson")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", action="store_true", help="also time a JSONL trace write and read")
    args = parser.parse_args()
    print(f"{'workload':<28} {'requests':>9} {'seconds':>8} {'us/request':>11} {'mean prompt':>12}")
    for workload in args.workloads:
        count = 0
        prompt_tokens = 0
        start = time.perf_counter()
        for req in make_requests(workload, args.rate, args.arrival, num_requests=args.num_requests, seed=args.seed):
            count += 1
            prompt_tokens += len(req.prompt)
        elapsed_s = time.perf_counter() - start
        print(f"{workload:<28} {count:>9} {elapsed_s:>8.2f} {elapsed_s / max(count, 1) * 1e6:>11.2f} "
              f"{prompt_tokens / max(count, 1):>12.0f}")
        if args.trace and count:
            print(_trace_costs(workload, args))


if __name__ == "__main__":
    main()
