"""python -m export --checkpoint DIR --repository model_repository --engine torch|onnx|tensorrt"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import traceback
from enum import Enum
from pathlib import Path

from wan22_triton.manifest import Limits
from wan22_triton.options import SpeedOptions
from wan22_triton.parallel.plan import ParallelPlan

from .loras import LoraSource
from .options import ExportOptions
from .repository import export_repository

HELP = {
    "device": "instance kind of the component models",
    "shape_spec": "JSON of video sizes (export/shape_spec.json): TensorRT profiles, --compile-artifacts' and "
                  "--warmup's sizes",
    "compile": "ENGINE=torch experts",
    "compile_artifacts": "with --compile regional: compile the experts here for every --shape-spec size (GPU "
                         "repository: on a GPU of the serving kind), warm them up before READY, serve only those "
                         "sizes (docs/compile_artifacts.md)",
    "warmup": "ENGINE=torch, eager experts: Triton's model_warmup for every model at each --shape-spec size, so "
              "READY means full speed; other sizes are still served (compiled experts: --compile-artifacts)",
    "quantization": "ENGINE=torch experts on a GPU",
    "attention": "ENGINE=torch experts on a GPU",
    "low_memory": "ENGINE=torch: weights in host memory, on the GPU only while a model works",
    "keep_workspace": "ENGINE=torch: keep each model's PyTorch GPU cache when it goes idle (default: handed back "
                      "after each encode and decode and after each expert's last step; nothing to free on a CPU)",
    "text_encoder_offload": "ENGINE=torch: the text encoder's weights in host memory, on the GPU only while it "
                            "encodes (~11 GB less for A14B, 0.21 s a request on an H200)",
    "replicas": "whole pipelines, one per device group (concurrent requests side by side)",
    "cfg_parallel": "2: a guided step's two halves on two expert instances at once",
    "ulysses": "ENGINE=torch: devices per expert instance, sequence parallel (divides the attention heads)",
    "ulysses_chunks": "pieces of heads each Ulysses self-attention is exchanged in, one piece's exchange beside "
                      "another's attention (1: no overlap)",
    "max_queue_seconds": "requests waiting longer are refused (Triton's queue policy; clients may ask for less); "
                         "0: no limit",
    "max_queue_size": "requests that may wait per orchestrator model behind those running; more are refused at "
                      "once (UNAVAILABLE, HTTP 503); 0: no bound",
    "lora": "NAME=FILE (both experts) or NAME=HIGH,LOW (one per expert), .safetensors; repeatable (docs/lora.md)",
}
REPEATABLE = {"lora": LoraSource.parse}  # tuple fields: the flag once per entry, each parsed by this
BENCHMARK_ONLY = ("random_weights_seed", "vae_cudnn_benchmark")  # set by perf/, not a user's choice
WEIGHTS = ("a Wan2.2 diffusers checkpoint folder: `huggingface-cli download Wan-AI/Wan2.2-T2V-A14B-Diffusers "
           "--local-dir DIR` fetches the A14B one; `make checkpoint` writes the tiny one")
ERROR_LOG = "export-error.log"  # beside the repository: the traceback of an unexpected failure


def _add_flags(parser: argparse.ArgumentParser, options: type) -> None:
    """One flag per field of an options dataclass, typed by its default (an enum's: its members the choices)."""
    for field in dataclasses.fields(options):
        if dataclasses.is_dataclass(field.default_factory) or field.name in BENCHMARK_ONLY:
            continue
        flag, default = f"--{field.name.replace('_', '-')}", getattr(options(), field.name)
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=HELP.get(field.name))
        elif field.name in REPEATABLE:
            parser.add_argument(flag, action="append", type=REPEATABLE[field.name], default=[], metavar="NAME=FILE[,FILE]",
                                help=HELP.get(field.name))
        elif isinstance(default, Enum):
            kind = type(default)
            parser.add_argument(flag, type=kind, choices=list(kind), default=default, help=HELP.get(field.name))
        else:
            parser.add_argument(flag, type=type(default) if default is not None else str, default=default,
                                help=HELP.get(field.name))


def _pick(options: type, args: argparse.Namespace):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(options) if hasattr(args, f.name)}
    return options(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def main(argv: list[str] | None = None, random_weights_seed: int | None = None) -> None:
    """`random_weights_seed`: the benchmarks' seam (perf.random_export), never a flag."""
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="Wan2.2 T2V diffusers checkpoint directory")
    parser.add_argument("--repository", default="model_repository", help="model repository to write")
    for options in (ExportOptions, Limits, SpeedOptions, ParallelPlan):
        _add_flags(parser, options)
    args = parser.parse_args(argv)
    opts = dataclasses.replace(_pick(ExportOptions, args), limits=_pick(Limits, args), speed=_pick(SpeedOptions, args),
                               parallel=_pick(ParallelPlan, args), random_weights_seed=random_weights_seed)
    if not (Path(args.checkpoint) / "model_index.json").is_file():
        _exit(f"--checkpoint {args.checkpoint} is not a diffusers checkpoint (no model_index.json); give {WEIGHTS}")
    start = time.perf_counter()
    try:
        export_repository(args.checkpoint, args.repository, opts)
    except KeyboardInterrupt:
        _exit("export cancelled (Ctrl-C); the repository is incomplete: run the export again", status=130)
    except (ValueError, OSError) as exc:  # options refused, files unreadable or unwritable: the message says which
        _exit(f"export failed: {exc}")
    except Exception as exc:  # a bug or an environment fault: the traceback goes to a file, one line here
        log = Path(args.repository).resolve().parent / ERROR_LOG
        log.write_text(traceback.format_exc())
        _exit(f"export failed: {type(exc).__name__}: {exc} (traceback in {log})")
    print(f"export done in {time.perf_counter() - start:.1f}s -> {args.repository}")


def _exit(message: str, status: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


if __name__ == "__main__":
    main()
