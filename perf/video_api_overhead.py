"""What the video jobs API (video_api/) adds to a generation: a job end to end against the same request sent
straight to Triton.

    python -m perf.video_api_overhead --checkpoint checkpoints/tiny-wan2.2-t2v-a14b          # CPU, the demo size
    python -m perf.video_api_overhead --checkpoint DIR --url 127.0.0.1:8001 --requests 3 ...  # a running server

Without `--url` the checkpoint is exported (torch engine, CPU unless `--device gpu`) and served here. The API runs
as its own process (`python -m video_api serve`, SQLite store) on that server. Alternately, `--requests` times:
the direct request (the streaming gRPC call the API itself makes, MP4 from the server) and one job through the
official `openai` SDK (`create_and_poll` with the server's poll hint, then `download_content`). Both measured from
the caller's side, after one unmeasured warm-up of each. As the two ratios of a tiny CPU model swing with the
machine's load, each job's own gRPC call is timed by the API too (its `video_job_completed` event): the job's time
beyond it is what the API adds. Written to `--out` (results.json: medians, the ratios, the command, the machine,
the commit).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from clients import grpc_client
from devtools.demo import DEMO_REQUEST
from server.process import free_ports
from server.triton_server import TritonServer
from wan22_triton.checkpoint import read_checkpoint
from wan22_triton.components.orchestrator import ORCHESTRATOR_MODELS, VIDEO_MP4, stream_model
from wan22_triton.operations import events
from wan22_triton.options import Device
from wan22_triton.request.contract import HEIGHT, OUTPUT_FORMAT, PROMPT, WIDTH, OutputFormat

from .perf_analyzer_sweep import machine_info

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m perf.video_api_overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--url", help="a running server's gRPC host:port (default: export and serve here)")
    p.add_argument("--device", type=Device, choices=list(Device), default=Device.CPU)
    p.add_argument("--requests", type=int, default=5, help="measured requests of each kind")
    p.add_argument("--out", type=Path, default=ROOT / "perf" / "results" / "cpu" / "video_api_overhead")
    return p.parse_args(argv)


class ApiService:
    """`python -m video_api serve` on a temporary SQLite store, until closed."""

    def __init__(self, triton_url: str, folder: Path) -> None:
        [self.port] = free_ports(1)
        self.key = "wv-" + secrets.token_urlsafe(16)
        cmd = [sys.executable, "-m", "video_api", "--database", f"sqlite:///{folder / 'jobs.db'}", "serve",
               "--triton-url", triton_url, "--port", str(self.port), "--results", str(folder / "results"),
               "--api-key", self.key]
        self.events_file = folder / "events.jsonl"
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, events.EVENTS_FILE_ENV: str(self.events_file)})
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health/ready", timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit("video_api exited at start") from None
                time.sleep(0.2)
        raise SystemExit("video_api did not answer within 60 s")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def measure(triton_url: str, model: str, requests: int, folder: Path) -> dict[str, Any]:
    import openai

    request = {**DEMO_REQUEST, OUTPUT_FORMAT: str(OutputFormat.MP4)}
    job = dict(prompt=request[PROMPT], size=f"{request[WIDTH]}x{request[HEIGHT]}",
               extra_body={k: v for k, v in DEMO_REQUEST.items() if k not in (PROMPT, WIDTH, HEIGHT)})
    api = ApiService(triton_url, folder)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{api.port}/v1", api_key=api.key, max_retries=0)

        def direct() -> bytes:
            return grpc_client.generate_stream(triton_url, request, None, stream_model(model))[VIDEO_MP4]

        ids: list[str] = []

        def through_api() -> bytes:
            video = client.videos.create_and_poll(model=model, **job)
            assert video.status == "completed", video.error
            ids.append(video.id)
            return client.videos.download_content(video.id).read()

        assert direct() == through_api(), "the API's MP4 differs from the direct request's"  # warm-up, and parity
        times: dict[str, list[float]] = {"direct_s": [], "api_job_s": []}
        for _ in range(requests):
            for name, call in (("direct_s", direct), ("api_job_s", through_api)):
                start = time.perf_counter()
                call()
                times[name].append(round(time.perf_counter() - start, 4))
    finally:
        api.close()
    # The job's own gRPC call, timed by the API: what the job adds around it is free of the generation's noise
    generation = {e["job"]: e["generation_s"] for e in events.read_events(api.events_file)
                  if e["event"] == "video_job_completed"}
    times["added_s"] = [round(total - generation[i], 4) for total, i in zip(times["api_job_s"], ids[1:])]
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"request": {k: v for k, v in request.items() if k != PROMPT}, "runs": times, "median": medians,
            "machine": machine_info(triton_url, "grpc"),
            "api_over_direct": round(medians["api_job_s"] / medians["direct_s"], 4),
            "added_over_direct": round(medians["added_s"] / medians["direct_s"], 4)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = read_checkpoint(args.checkpoint)
    model = ORCHESTRATOR_MODELS[info.family]
    with tempfile.TemporaryDirectory(prefix="wan22-api-overhead-") as tmp:
        folder = Path(tmp)
        if args.url:
            result = measure(args.url, model, args.requests, folder)
        else:
            from export.repository import ExportOptions, export_repository

            export_repository(args.checkpoint, folder / "repo", ExportOptions(device=args.device), log=lambda _: None)
            with TritonServer(folder / "repo", log_file=folder / "tritonserver.log") as server:
                result = measure(server.grpc_url, model, args.requests, folder)
    result.update({
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m perf.video_api_overhead " + " ".join(sys.argv[1:] if argv is None else argv),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "checkpoint": {"family": str(info.family), "path": str(args.checkpoint)},
    })
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    median = result["median"]
    print(f"direct {median['direct_s']:.3f} s, API job {median['api_job_s']:.3f} s ({result['api_over_direct']:.3f}x); "
          f"added by the API around its gRPC call {1000 * median['added_s']:.1f} ms, "
          f"{100 * result['added_over_direct']:.1f}% of the direct request (medians of {args.requests}) -> "
          f"{args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
