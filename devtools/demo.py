"""The demo behind `make demo`: export a checkpoint, start tritonserver, generate over gRPC, write an MP4, stop.

Prints how long each stage took (the server's own stage timings included) and where the video is.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from clients import grpc_client
from clients.common import save
from server.triton_server import TritonServer
from export.repository import ExportOptions, export_repository
from wan22_triton.components.orchestrator import STAGE_SECONDS
from wan22_triton.options import Engine
from wan22_triton.request.contract import HEIGHT, NEGATIVE_PROMPT, NUM_FRAMES, NUM_INFERENCE_STEPS, PROMPT, SEED, WIDTH

DEMO_REQUEST = {
    PROMPT: "A red panda walks along a mossy branch in soft morning light, cinematic",
    NEGATIVE_PROMPT: "blurry, low quality",
    NUM_FRAMES: 17,
    HEIGHT: 64,
    WIDTH: 112,
    NUM_INFERENCE_STEPS: 8,
    SEED: 42,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", default="checkpoints/tiny-wan2.2-t2v-a14b")
    parser.add_argument("--repository", default="model_repository")
    parser.add_argument("--engine", type=Engine, default=Engine.TORCH, choices=(Engine.TORCH, Engine.ONNX))
    parser.add_argument("--output", default="outputs/demo.mp4")
    args = parser.parse_args()

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    export_repository(args.checkpoint, args.repository, ExportOptions(engine=args.engine))
    timings["export"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log = Path("outputs") / "tritonserver.log"
    log.parent.mkdir(exist_ok=True)
    with TritonServer(args.repository, log_file=log) as server:
        timings["server start"] = time.perf_counter() - t0
        fps = grpc_client.fps_of(server.grpc_url)
        t0 = time.perf_counter()
        out = grpc_client.generate(server.grpc_url, DEMO_REQUEST)
        timings["request (gRPC)"] = time.perf_counter() - t0
        save(out, args.output, fps, timings["request (gRPC)"])
        t0 = time.perf_counter()
    timings["server stop"] = time.perf_counter() - t0

    print("\nstage timings:")
    for stage, seconds in timings.items():
        print(f"  {stage:<16} {seconds:7.2f} s")
    for stage, seconds in out[STAGE_SECONDS].items():
        print(f"    server {stage:<12} {seconds:7.2f} s")
    print(f"\nvideo: {Path(args.output).resolve()} (server log: {log})")


if __name__ == "__main__":
    main()
