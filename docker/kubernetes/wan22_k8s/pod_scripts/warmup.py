"""Startup probe of a tier whose first request is slow (compile): succeeds once the server is ready AND one short
generation has gone through, so the pod joins the Service warm. Runs in the serve image: the standard library, and
the request's names from the project there (on its PYTHONPATH).

    python3 warmup.py --url http://127.0.0.1:8000 --model wan22_t2v --steps 4 --timeout 870

Exit 0: warm; 1: not ready yet, or the warm-up request failed (the kubelet probes again). The request leaves out the
video size, so it runs at the checkpoint's defaults (the size clients ask for, the shapes the compile is for);
`--num-frames/--height/--width` choose another. A request cut short by --timeout is cancelled by the HTTP guard; the
compile it finished stays, so the next attempt is shorter.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

from wan22_triton.components.orchestrator import ORCHESTRATOR, SEED_USED, STEP_EXPERTS
from wan22_triton.request.contract import BY_NAME, HEIGHT, NUM_FRAMES, NUM_INFERENCE_STEPS, PROMPT, WIDTH

READY_PATH = "/v2/health/ready"


def is_ready(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url + READY_PATH, timeout=timeout) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def request_body(args: argparse.Namespace) -> dict:
    """Triton's JSON inference request: the prompt and step count, sizes only if given; small outputs only."""
    values = {PROMPT: args.prompt, NUM_INFERENCE_STEPS: args.steps, NUM_FRAMES: args.num_frames,
              HEIGHT: args.height, WIDTH: args.width}
    inputs = [{"name": name, "shape": [1], "datatype": BY_NAME[name].tensor.wire_dtype, "data": [value]}
              for name, value in values.items() if value is not None]
    return {"inputs": inputs, "outputs": [{"name": SEED_USED}, {"name": STEP_EXPERTS}]}


def warm_up(args: argparse.Namespace) -> list[str]:
    """Sends the request; returns the expert of each step."""
    request = urllib.request.Request(f"{args.url}/v2/models/{args.model}/infer",
                                     data=json.dumps(request_body(args)).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=args.timeout) as answer:
        outputs = {out["name"]: out for out in json.load(answer)["outputs"]}
    return list(outputs[STEP_EXPERTS]["data"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=ORCHESTRATOR)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompt", default="warm-up")
    parser.add_argument("--num-frames", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--timeout", type=float, default=870.0, help="seconds for the warm-up request")
    args = parser.parse_args(argv)
    if not is_ready(args.url):
        print(f"{args.url}{READY_PATH}: not ready yet")
        return 1
    started = time.monotonic()
    try:
        experts = warm_up(args)
    except urllib.error.HTTPError as error:
        print(f"warm-up request failed: HTTP {error.code} {error.read()[:300]!r}")
        return 1
    except (urllib.error.URLError, OSError) as error:  # timeouts included
        print(f"warm-up request failed: {error}")
        return 1
    print(f"warm: {len(experts)} steps ({', '.join(sorted(set(experts)))}) in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
