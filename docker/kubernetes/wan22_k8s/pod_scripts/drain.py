"""preStop hook: wait, at most --timeout seconds, until this server has no generation in progress and none queued,
read from its own /metrics; the kubelet sends SIGTERM after it. A pod that is scaled down or replaced finishes its
minute-long requests this way (it is out of the Service's endpoints meanwhile, so no new ones arrive).
Standard library only (runs in the serve image).

    python3 drain.py --metrics-url http://127.0.0.1:8002/metrics --models wan22_t2v,wan22_t2v_stream --timeout 900

Always exits 0: when the metrics cannot be read, the server is gone and there is nothing to wait for.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import urllib.error
import urllib.request

# Generations in the orchestrator now (wan22_triton/operations/metrics.py), and requests Triton holds in the model's queue.
BUSY_GAUGES = ("wan22_active_generations", "nv_inference_pending_request_count")
_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def busy_count(metrics_text: str, models: set[str]) -> float:
    """Sum of the busy gauges over the given models."""
    total = 0.0
    for line in metrics_text.splitlines():
        sample = _SAMPLE.match(line)
        if not sample or sample["name"] not in BUSY_GAUGES:
            continue
        if dict(_LABEL.findall(sample["labels"] or "")).get("model") in models:
            total += float(sample["value"])
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics-url", default="http://127.0.0.1:8002/metrics")
    parser.add_argument("--models", default="wan22_t2v,wan22_t2v_stream", help="comma-separated")
    parser.add_argument("--timeout", type=float, default=900.0)
    # Endpoint removal reaches every node's proxy a little after the pod starts terminating: requests routed
    # meanwhile still arrive, so look only after this.
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--poll", type=float, default=5.0)
    args = parser.parse_args(argv)
    models, deadline = set(args.models.split(",")), time.monotonic() + args.timeout
    time.sleep(args.settle)
    while True:
        try:
            with urllib.request.urlopen(args.metrics_url, timeout=10) as answer:
                busy = busy_count(answer.read().decode(), models)
        except (urllib.error.URLError, OSError) as error:
            print(f"drain: metrics unreachable ({error}); nothing to wait for")
            return 0
        if busy == 0:
            print("drain: no generation in progress or queued")
            return 0
        if time.monotonic() >= deadline:
            print(f"drain: {busy:.0f} generations still in progress or queued after {args.timeout:.0f} s; stopping")
            return 0
        time.sleep(args.poll)


if __name__ == "__main__":
    sys.exit(main())
