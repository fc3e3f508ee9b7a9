"""Readiness probe of a server pod that also runs the video jobs API (one probe per container): ready once every URL
answers 200, here Triton's /v2/health/ready (every model READY) and the API's /health/ready (it and its job
database answer). Standard library only (runs in the serve image).

    python3 ready.py --timeout 1 http://127.0.0.1:8000/v2/health/ready http://127.0.0.1:8080/health/ready

Exit 0: ready; 1: the first URL that is not, said in one line (the kubelet shows it in the pod's events).
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request


def not_ready(url: str, timeout: float) -> str | None:
    """Why `url` is not ready, or None when it answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            status = answer.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (urllib.error.URLError, OSError) as error:
        return f"{url}: {getattr(error, 'reason', error)}"
    return None if status == 200 else f"{url}: HTTP {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds each URL may take")
    args = parser.parse_args(argv)
    for url in args.urls:
        if reason := not_ready(url, args.timeout):
            print(f"not ready: {reason}", flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
