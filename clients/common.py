"""What the gRPC and HTTP clients share: flags for every request input, the request tensors, MP4 output, and
failures as one line. Inputs, outputs and model names come from their declarations (wan22_triton.request.contract,
wan22_triton.components.orchestrator), which need numpy only: no torch on a client."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import sys
from pathlib import Path
from typing import Any, Iterator, NoReturn

import numpy as np

from wan22_triton.checkpoint import CheckpointInfo, GenerationDefaults
from wan22_triton.components.common import MANIFEST_PARAMETER
from wan22_triton.components.orchestrator import (ORCHESTRATOR, ORCHESTRATOR_MODELS, SEED_USED, STAGE_SECONDS, VIDEO,
                                                  VIDEO_MP4)
from wan22_triton.request.contract import BY_NAME, FIELDS, OUTPUT_FORMAT, SEED, Default, OutputFormat, RequestField

from .admin import ADMIN_KEY_ENV, admin_key_from_env

MODEL = ORCHESTRATOR
MP4_SUFFIX = ".mp4"  # what --output writes
# Request inputs: name -> (Triton dtype, numpy dtype), from the contract. Absent flags are left to the server.
REQUEST_INPUTS = {f.name: (f.tensor.wire_dtype, np.dtype(f.dtype).type) for f in FIELDS}
RULES_EPILOG = ("<name> in a rule: the server's value (its limits, the checkpoint's factors, the LoRAs and presets "
                "it was exported with)")

SHOWN_DEFAULTS = {Default.CHECKPOINT: "the checkpoint's", Default.RANDOM: "random", None: "none", "": '""'}


def _file_bytes(path: str) -> bytes:
    """A binary input's flag: the file's bytes."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {e.strerror}") from None


def flag_help(field: RequestField) -> str:
    """What a request flag is, its rule and its default, from the contract."""
    default = field.default
    shown = SHOWN_DEFAULTS.get(default, default)
    tail = "" if default is Default.REQUIRED else f"; default: {shown}"
    return f"{field.help}; must be {field.describe()}{tail}"


def parse_args(default_url: str, description: str, streaming: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, epilog=RULES_EPILOG)
    parser.add_argument("--url", default=default_url, help="server address (host:port)")
    families = " or ".join(sorted(set(ORCHESTRATOR_MODELS.values())))
    parser.add_argument("--model", default=MODEL,
                        help=f"the model to call, named by the checkpoint's family: {families} (default {MODEL})")
    parser.add_argument("--output", default="outputs/video.mp4", help="MP4 file to write")
    parser.add_argument("--fps", type=float, default=None, help="default: the checkpoint's, from the model's manifest")
    parser.add_argument("--timeout", type=float, default=None, help="client-side timeout in seconds")
    parser.add_argument("--admin-key", default=admin_key_from_env(),
                        help=f"the server's admin key, sent with every call (default ${ADMIN_KEY_ENV}); "
                             "needed for --shared-memory")
    if streaming:
        parser.add_argument("--stream", action="store_true",
                            help="per-step progress bar (the model's streaming twin, <model>_stream)")
        parser.add_argument("--shared-memory", action="store_true",
                            help="frames through system shared memory (client on the server's host; unary only)")
    for field in filter(lambda f: f.scalar, FIELDS):  # arrays (decoded pixels) are for programs
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=_file_bytes if field.binary else field.kind,
                            metavar="FILE" if field.binary else None, default=None,
                            required=field.default is Default.REQUIRED, help=flag_help(field))
    args = parser.parse_args()
    if Path(args.output).suffix.lower() != MP4_SUFFIX:  # before the request: no minutes of work for a file not written
        _exit(f"--output {args.output}: the clients write MP4 only; give a path ending in {MP4_SUFFIX}", status=2)
    if streaming and args.stream and args.shared_memory:
        parser.error("--shared-memory works with unary requests only: the streamed video comes in the last gRPC "
                     "message; drop --stream or --shared-memory")
    return args


QUEUE_FULL = "Exceeds maximum queue size"  # Triton's refusal of a request past the model's queue bound


@contextlib.contextmanager
def one_line_errors(url: str, protocol: str, timeout: float | None) -> Iterator[None]:
    """A client's failure as one line on stderr (what failed, the URL, what to check) and exit status 1."""
    from tritonclient.utils import InferenceServerException

    unreachable = (f"cannot reach tritonserver over {protocol} at {url} ({{}}); is it running (make serve) and is "
                   f"--url its {protocol} host:port?")
    no_answer = (f"no answer from {url} within {f'--timeout {timeout} s' if timeout else 'the timeout'}; gave up"
                 + (" (the server cancels the request)" if protocol == "gRPC" else ""))
    try:
        yield
    except KeyboardInterrupt:
        _exit("cancelled (Ctrl-C)", status=130)
    except InferenceServerException as exc:
        status, message = exc.status() or "", exc.message() or str(exc)
        if "is restricted" in message:
            _exit(f"the server at {url} refused an admin call without the right admin key ({message}); pass "
                  f"--admin-key or set ${ADMIN_KEY_ENV} to the key the launcher printed at start")
        if QUEUE_FULL in message:  # UNAVAILABLE too, but the server answered
            _exit(f"the server at {url} is busy: its queue of waiting requests is full (the export's "
                  "--max-queue-size); try again later")
        if "UNAVAILABLE" in status:  # gRPC: refused, unresolvable, unreachable
            _exit(unreachable.format(message.split(";")[-1].strip()))
        if "DEADLINE_EXCEEDED" in status:
            _exit(no_answer)
        _exit(f"the server at {url} answered with an error: {status} {message}".replace("  ", " "))
    except (TimeoutError, OSError) as exc:  # HTTP transport; the stream's own timeout
        _exit(no_answer if isinstance(exc, TimeoutError) else unreachable.format(exc.strerror or exc))
    except ValueError as exc:  # the request or a shared-memory region refused here, before sending
        _exit(str(exc))
    except http.client.HTTPException as exc:  # an answer that is not HTTP (the HTTP client's parser): another port
        _exit(f"{url} did not answer in HTTP ({exc}); is --url the server's HTTP port (gRPC has its own)?")


def _exit(message: str, status: int = 1) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def request_values(args: argparse.Namespace) -> dict[str, Any]:
    """The request inputs given on the command line."""
    return {name: vars(args)[name] for name in REQUEST_INPUTS if vars(args).get(name) is not None}


def request_arrays(values: dict[str, Any]) -> dict[str, tuple[str, np.ndarray]]:
    """{input name: (Triton dtype, array of shape [1], or the value's own for an array field)}; unknown names are an
    error, absent ones use defaults."""
    out = {}
    for name, value in values.items():
        if name not in REQUEST_INPUTS:
            raise ValueError(f"unknown request input {name!r}; known: {sorted(REQUEST_INPUTS)}")
        triton_dtype, dtype = REQUEST_INPUTS[name]
        if not BY_NAME[name].scalar:
            out[name] = (triton_dtype, np.ascontiguousarray(value, dtype=dtype))
            continue
        data = value.encode("utf-8") if isinstance(value, str) else value
        out[name] = (triton_dtype, np.array([data], dtype=dtype))
    return out


def served_checkpoint(config: dict[str, Any]) -> CheckpointInfo:
    """The checkpoint a model serves, from the manifest in its config (Triton's JSON form), read without the
    manifest module (torch)."""
    data = json.loads(config["parameters"][MANIFEST_PARAMETER]["string_value"])["checkpoint"]
    return CheckpointInfo(**{**data, "generation": GenerationDefaults(**data["generation"])})


def model_fps(config: dict[str, Any]) -> float:
    """The checkpoint's fps, from the model's config."""
    return float(served_checkpoint(config).generation.fps)


def output_names(values: dict[str, Any]) -> list[str]:
    video = VIDEO_MP4 if values.get(OUTPUT_FORMAT) == OutputFormat.MP4 else VIDEO
    return [video, SEED_USED, STAGE_SECONDS]


def unpack_metadata(result) -> dict[str, Any]:
    """Seed and the server's per-stage seconds from an InferResult of either protocol."""
    return {
        SEED: int(result.as_numpy(SEED_USED)[0]),
        STAGE_SECONDS: json.loads(result.as_numpy(STAGE_SECONDS)[0]),
    }


def unpack(result) -> dict[str, Any]:
    """video (frames or MP4 bytes), seed and the server's per-stage seconds from an InferResult of either protocol."""
    out = unpack_metadata(result)
    mp4 = result.as_numpy(VIDEO_MP4)
    if mp4 is not None:
        out[VIDEO_MP4] = bytes(mp4[0])
    else:
        out[VIDEO] = result.as_numpy(VIDEO)
    return out


def save(out: dict[str, Any], path: str, fps: float, latency: float) -> None:
    from wan22_triton.request.video import read_mp4, write_mp4

    if VIDEO_MP4 in out:  # encoded on the server at the checkpoint's fps
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(out[VIDEO_MP4])
        video, fps = read_mp4(path)
    else:
        video = out[VIDEO]
        write_mp4(video, path, fps)
    if not Path(path).is_file() or Path(path).stat().st_size == 0:
        _exit(f"{path} was not written (ffmpeg left no video there); check the folder is writable")
    frames, height, width, _ = video.shape
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in out[STAGE_SECONDS].items())
    print(f"wrote {path} ({frames} frames, {width}x{height}, {fps:g} fps), seed {out[SEED]}")
    print(f"request latency {latency:.2f}s (server: {stages})")
