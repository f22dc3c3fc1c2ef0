"""How faithfully `schedctl load`'s client keeps an open-loop schedule: send lag and client CPU per request.

    python benchmarks/loadgen_client.py                          # 50, 200 and 500 req/s, 1,000 requests each
    python benchmarks/loadgen_client.py --rates 100,1000 --num-requests 2000

The server is tests/fake_stream_server.py in its own process (a stand-in that answers at once, then one token every
--token-interval-s), so what is measured is the client: how late a request leaves behind its scheduled time
(`arrival_s - scheduled_s`), the TTFT it sees when the server adds no delay (the client's and loopback's own
share of every TTFT it reports), and the client's CPU seconds per request. On a busy 2-core machine the figures
move with the other load; read them as the rate up to which the client's own lag stays small.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from schedctl.loadgen import LoadConfig, retime, run_load
from schedctl.workloads.registry import make_requests

SERVER = Path(__file__).resolve().parents[1] / "tests" / "fake_stream_server.py"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="50,200,500", help="requests per second, comma-separated")
    ap.add_argument("--num-requests", type=int, default=1000)
    ap.add_argument("--output-len", type=int, default=8, help="tokens per answer")
    ap.add_argument("--token-interval-s", type=float, default=0.005)
    args = ap.parse_args()
    server = subprocess.Popen([sys.executable, str(SERVER), "--token-interval-s", str(args.token_interval_s)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        print(f"client against {url} (answers at once, a token every {args.token_interval_s * 1e3:g} ms, "
              f"{args.output_len} tokens); {args.num_requests} requests per rate")
        print(f"{'rate':>6} {'lag p50 ms':>11} {'lag p99 ms':>11} {'lag max ms':>11} {'TTFT p50 ms':>12} "
              f"{'TTFT p99 ms':>12} {'CPU ms/req':>11} {'errors':>7}")
        for rate in (float(r) for r in args.rates.split(",")):
            spec = f"gsp:num_groups=8,system_prompt_len=64,question_len=16,output_len={args.output_len}"
            reqs = list(retime(make_requests(spec, rate, num_requests=args.num_requests, seed=0)))
            cpu0 = time.process_time()
            res = run_load(reqs, LoadConfig(url=url, vocab_size=32000, request_timeout_s=30.0))
            cpu_ms = (time.process_time() - cpu0) * 1e3 / max(1, len(res.results))
            lag_ms = np.array([r.send_s - r.scheduled_s for r in res.results]) * 1e3
            s = res.summary
            print(f"{rate:>6g} {np.quantile(lag_ms, 0.5):>11.2f} {np.quantile(lag_ms, 0.99):>11.2f} "
                  f"{lag_ms.max():>11.2f} {s.ttft_p50_s * 1e3:>12.2f} {s.ttft_p99_s * 1e3:>12.2f} {cpu_ms:>11.2f} "
                  f"{s.errors + s.timeouts:>7}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
