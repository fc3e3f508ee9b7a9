"""What the gRPC and HTTP clients share: flags for every request input, the request tensors, MP4 output."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from wan22_triton import components
from wan22_triton.manifest import Manifest

MODEL = "wan22_t2v"
# Request inputs: name -> (Triton dtype, numpy dtype), from the contract's one declaration. Absent flags are left
# to the server's defaults.
REQUEST_INPUTS = {t.name: (t.wire_dtype, np.dtype(t.dtype).type) for t in components.REQUEST_INPUTS}


def parse_args(default_url: str, description: str, streaming: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", default=default_url, help="server address (host:port)")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--output", default="outputs/video.mp4", help="MP4 file to write")
    parser.add_argument("--fps", type=float, default=None, help="default: the model's `fps` parameter (checkpoint's)")
    parser.add_argument("--timeout", type=float, default=None, help="client-side timeout in seconds")
    parser.add_argument("--prompt", required=True)
    if streaming:
        parser.add_argument("--stream", action="store_true", help="per-step progress bar (wan22_t2v_stream)")
        parser.add_argument("--shared-memory", action="store_true",
                            help="frames through system shared memory (client on the server's host; unary only)")
    kinds = {np.int32: int, np.int64: int, np.float32: float, np.object_: str}
    for name, (_, dtype) in REQUEST_INPUTS.items():
        if name != "prompt":
            parser.add_argument(f"--{name.replace('_', '-')}", type=kinds[dtype], default=None)
    return parser.parse_args()


def request_values(args: argparse.Namespace) -> dict[str, Any]:
    """The request inputs given on the command line."""
    return {name: getattr(args, name) for name in REQUEST_INPUTS if getattr(args, name) is not None}


def request_arrays(values: dict[str, Any]) -> dict[str, tuple[str, np.ndarray]]:
    """{input name: (Triton dtype, array of shape [1])}; unknown names are an error, absent ones use defaults."""
    out = {}
    for name, value in values.items():
        if name not in REQUEST_INPUTS:
            raise ValueError(f"unknown request input {name!r}; known: {sorted(REQUEST_INPUTS)}")
        triton_dtype, dtype = REQUEST_INPUTS[name]
        data = value.encode("utf-8") if dtype is np.object_ else value
        out[name] = (triton_dtype, np.array([data], dtype=dtype))
    return out


def model_fps(config: dict[str, Any]) -> float:
    """The checkpoint's fps, from the manifest in the model's config (Triton's JSON form)."""
    return float(Manifest.from_model_config(config).checkpoint.generation.fps)


def output_names(values: dict[str, Any]) -> list[str]:
    video = "video_mp4" if values.get("output_format") == "mp4" else "video"
    return [video, "seed_used", "stage_seconds"]


def unpack_metadata(result) -> dict[str, Any]:
    """Seed and the server's per-stage seconds from an InferResult of either protocol."""
    return {
        "seed": int(result.as_numpy("seed_used")[0]),
        "stage_seconds": json.loads(result.as_numpy("stage_seconds")[0]),
    }


def unpack(result) -> dict[str, Any]:
    """video (frames or MP4 bytes), seed and the server's per-stage seconds from an InferResult of either protocol."""
    out = unpack_metadata(result)
    mp4 = result.as_numpy("video_mp4")
    if mp4 is not None:
        out["video_mp4"] = bytes(mp4[0])
    else:
        out["video"] = result.as_numpy("video")
    return out


def save(out: dict[str, Any], path: str, fps: float, latency: float) -> None:
    from pathlib import Path

    from wan22_triton.video import read_mp4, write_mp4

    if "video_mp4" in out:  # encoded on the server at the checkpoint's fps
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(out["video_mp4"])
        video, fps = read_mp4(path)
    else:
        video = out["video"]
        write_mp4(video, path, fps)
    frames, height, width, _ = video.shape
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in out["stage_seconds"].items())
    print(f"wrote {path} ({frames} frames, {width}x{height}, {fps:g} fps), seed {out['seed']}")
    print(f"request latency {latency:.2f}s (server: {stages})")
