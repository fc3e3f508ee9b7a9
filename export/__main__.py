"""python -m export --checkpoint DIR --repository model_repository --engine torch|onnx|tensorrt"""

from __future__ import annotations

import argparse
import dataclasses
import time

from .repository import ENGINES, ExportOptions, export_repository


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="Wan2.2 T2V diffusers checkpoint directory")
    parser.add_argument("--repository", default="model_repository", help="model repository to write")
    parser.add_argument("--engine", choices=ENGINES, default="torch")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="instance kind of the component models")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--shape-spec", default=None, help="ENGINE=tensorrt: JSON of video sizes (export/shape_spec.json)")
    parser.add_argument("--compile", default="none", help="ENGINE=torch experts: none | regional")
    parser.add_argument("--quantization", default="none", help="ENGINE=torch experts on a GPU: none | fp8_rowwise")
    parser.add_argument("--attention", default="sdpa", help="ENGINE=torch experts on a GPU: sdpa | fp8_cudnn | flash_attn_4")
    for field in dataclasses.fields(ExportOptions):
        flag = f"--{field.name.replace('_', '-')}"
        if field.name in ("engine", "device", "precision", "shape_spec", "compile", "quantization", "attention"):
            continue
        if isinstance(field.default, bool):
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=int, default=field.default)
    args = parser.parse_args(argv)
    opts = ExportOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ExportOptions)})
    start = time.perf_counter()
    export_repository(args.checkpoint, args.repository, opts)
    print(f"export done in {time.perf_counter() - start:.1f}s -> {args.repository}")


if __name__ == "__main__":
    main()
