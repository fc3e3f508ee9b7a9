"""TensorRT plans for a whole model repository: FP16 experts, FP32 VAE frame graphs, their Triton configs, the CLI.

Triton serves the plans natively (`platform: "tensorrt_plan"`); nothing here is a Python model. The input is the
ONNX repository `export.onnx_export` writes (engine `onnx`), the output replaces the graphs in place:

    transformer_high_noise/1/model.onnx           ->  transformer_high_noise/1/model.plan  (+ model.plan.json)
    transformer_low_noise/1/model.onnx            ->  transformer_low_noise/1/model.plan   (+ model.plan.json)
    vae_decoder_first_frame/1/model.onnx          ->  vae_decoder_first_frame/1/model.plan (+ model.plan.json)
    vae_decoder_step/1/model.onnx                 ->  vae_decoder_step/1/model.plan        (+ model.plan.json)

`vae_decoder` itself stays a Python-backend model: it loops over the latent frames and calls `vae_decoder_first_frame`
once and `vae_decoder_step` once per further frame through BLS, threading the caches (`cache_out_i` -> `cache_in_i`;
`vae_decoder/1/vae_decoder_cache_layout.json` gives their count).

Precision (`tensorrt_specs`): the experts are converted to the requested precision with their FP32 islands
(`export.onnx_precision`); the VAE frame graphs stay FP32 graphs, so their plans are FP32. TF32 stays allowed for
their convolutions (TensorRT's default, and what PyTorch's cuDNN convolutions do by default): the reason for an FP32
VAE is FP16's range (Wan's decoder activations overflow it), and TF32 has FP32's range. One plan is built by
`export.tensorrt_engine.TensorRTEngine`.

CLI (after `python -m export ... --engine onnx` wrote the ONNX repository)::

    python -m export.tensorrt_build --repository model_repository [--precision fp16] [--shape-spec FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from wan22_triton.checkpoint import CheckpointInfo
from wan22_triton.components.common import CacheEntry, ComponentSpec, ShapeSpec
from wan22_triton.components.expert import expert_models, transformer_spec
from wan22_triton.components.orchestrator import ORCHESTRATOR
from wan22_triton.components.vae_decoder import VAE_DECODER, vae_decoder_frame_specs
from wan22_triton.engines.onnx_runner import ONNX_GRAPH
from wan22_triton.options import Engine, Precision, parse

from .model_config import build_model_config, to_pbtxt
from .onnx_precision import convert_to_low_precision
from .tensorrt_engine import DEFAULT_WORKSPACE_BYTES, PLAN_FILE, Log, TensorRTEngine

TENSORRT_PLATFORM = "tensorrt_plan"
SHAPE_SPEC_FILE = Path(__file__).with_name("shape_spec.json")


# --------------------------------------------------------------------------------------------- shape spec, profiles


def load_shape_spec(path: str | Path | None = None) -> ShapeSpec:
    """The shape spec JSON ({"num_frames": [...], "resolutions": [[h, w], ...], "max_batch": n}); default: ours."""
    data = json.loads(Path(path or SHAPE_SPEC_FILE).read_text())
    return ShapeSpec(
        num_frames=tuple(int(f) for f in data["num_frames"]),
        resolutions=tuple((int(h), int(w)) for h, w in data["resolutions"]),
        max_batch=int(data.get("max_batch", ShapeSpec.max_batch)),
    )


def shape_spec_dict(spec: ShapeSpec) -> dict[str, Any]:
    return {"num_frames": list(spec.num_frames), "resolutions": [list(r) for r in spec.resolutions],
            "max_batch": spec.max_batch}


def profile_ranges(spec: ComponentSpec, shape_spec: ShapeSpec, info: CheckpointInfo) -> list[dict[str, tuple[int, int, int]]]:
    """One symbol-range set per entry (frame count x resolution) of the shape spec, as TensorRT profiles are built
    from (`ComponentSpec.profile`): spatial sizes exact (min = opt = max, the fastest kernels for each size), batch
    from 1 to the component's Triton max_batch_size. Entries giving the same input shapes (the VAE frame graphs do
    not see the frame count) share one profile."""
    batch = min(shape_spec.max_batch, spec.max_batch_size) if spec.max_batch_size > 0 else shape_spec.max_batch
    out: list[dict[str, tuple[int, int, int]]] = []
    seen: set[tuple[tuple[str, tuple[tuple[int, ...], ...]], ...]] = set()
    for frames in shape_spec.num_frames:
        for resolution in shape_spec.resolutions:
            entry = ShapeSpec(num_frames=(frames,), resolutions=(resolution,), max_batch=batch)
            ranges = entry.symbol_ranges(info)
            ranges["batch"] = (1, batch, batch)
            key = tuple(sorted(spec.profile(ranges).items()))
            if key not in seen:
                seen.add(key)
                out.append(ranges)
    return out


# --------------------------------------------------------------------------------------------- the repository


@dataclass(frozen=True)
class PlanSpec:
    """A served TensorRT model: its declaration, the precision its plan is built in, and the ONNX graph it is built
    from (relative to the repository)."""

    spec: ComponentSpec
    precision: Precision
    onnx: Path


def tensorrt_model_config(spec: ComponentSpec, *, num_profiles: int, parameters: Mapping[str, Any] | None = None,
                          instance_count: int = 1) -> Any:
    """config.pbtxt (ModelConfig) of a plan: `platform: "tensorrt_plan"`, KIND_GPU, `default_model_filename:
    "model.plan"`, every optimization profile available to the instance group (Triton picks the one that fits)."""
    config = build_model_config(spec, backend=None, platform=TENSORRT_PLATFORM, instance_kind="KIND_GPU",
                                instance_count=instance_count, parameters=parameters)
    config.default_model_filename = PLAN_FILE
    config.instance_group[0].profile.extend(str(i) for i in range(num_profiles))
    return config


def tensorrt_specs(info: CheckpointInfo, layout: Sequence[CacheEntry], precision: Precision) -> dict[str, PlanSpec]:
    """Served TensorRT models by name: the experts in `precision`, the VAE frame graphs always in fp32."""
    specs = {name: PlanSpec(transformer_spec(info, name), precision, Path(name, "1", ONNX_GRAPH))
             for name in expert_models(info)}
    for spec in vae_decoder_frame_specs(info, layout):
        specs[spec.name] = PlanSpec(spec, Precision.FP32, Path(spec.name, "1", ONNX_GRAPH))
    return specs


def write_tensorrt_configs(repository: str | Path, info: CheckpointInfo, layout: Sequence[CacheEntry], *,
                           precision: Precision = Precision.FP16,
                           shape_spec: ShapeSpec | None = None) -> dict[str, Path]:
    """Write config.pbtxt of the two experts and the two VAE frame models; returns model name -> config path."""
    shape_spec = shape_spec or load_shape_spec()
    written = {}
    for name, plan in tensorrt_specs(info, layout, precision).items():
        num_profiles = len(profile_ranges(plan.spec, shape_spec, info))
        config = tensorrt_model_config(plan.spec, num_profiles=num_profiles,
                                       parameters={"engine": Engine.TENSORRT, "precision": plan.precision})
        path = Path(repository) / name / "config.pbtxt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_pbtxt(config))
        written[name] = path
    return written


def _remove_graph(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".data").unlink(missing_ok=True)


def build_repository_engines(repository: str | Path, info: CheckpointInfo, *, precision: Precision = Precision.FP16,
                             shape_spec: ShapeSpec | None = None, work_dir: str | Path | None = None,
                             timing_cache: str | Path | None = None, keep_onnx: bool = False,
                             workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, log: Log = print) -> dict[str, dict[str, Any]]:
    """Turn the ONNX repository (engine `onnx`) at `repository` into the TensorRT one, in place: plans for the two
    experts (in `precision`) and the two VAE frame graphs (fp32), their configs, the ONNX graphs removed unless
    `keep_onnx`. Intermediate graphs go to `work_dir` (default: `.<repository>.tensorrt` next to the repository,
    which also keeps the timing cache between builds). Returns model name -> plan info."""
    from wan22_triton.engines.vae_frames import load_cache_layout

    precision = parse(Precision, precision)
    repo = Path(repository)
    shape_spec = shape_spec or load_shape_spec()
    work = Path(work_dir) if work_dir else repo.resolve().parent / f".{repo.resolve().name}.tensorrt"
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(timing_cache) if timing_cache else work / "timing.cache"
    layout = load_cache_layout(repo / VAE_DECODER / "1")
    built: dict[str, dict[str, Any]] = {}
    for name, plan in tensorrt_specs(info, layout, precision).items():
        src = repo / plan.onnx
        if not src.is_file():
            raise FileNotFoundError(f"{src} is missing: export the ONNX graphs first (python -m export --engine onnx)")
        extra: dict[str, Any] = {"shape_spec": shape_spec_dict(shape_spec)}
        graph = src
        if plan.precision != Precision.FP32:  # strongly typed: the graph itself must be in the plan's precision
            graph = work / name / f"model.{plan.precision}.onnx"
            log(f"  {name}: converting to {plan.precision}")
            extra["conversion"] = convert_to_low_precision(src, graph, plan.precision).to_dict()
        engine = TensorRTEngine(repo / name / "1" / PLAN_FILE)
        built[name] = engine.build(graph, plan.spec, profile_ranges(plan.spec, shape_spec, info), plan.precision,
                                   cache, workspace_bytes=workspace_bytes, extra_info=extra, log=log)
        if graph != src:
            _remove_graph(graph)
        if not keep_onnx:
            _remove_graph(src)
    write_tensorrt_configs(repo, info, layout, precision=precision, shape_spec=shape_spec)
    return built


def _read_info(repository: Path, checkpoint: str | None) -> CheckpointInfo:
    if checkpoint:
        from wan22_triton.checkpoint import read_checkpoint

        return read_checkpoint(checkpoint)
    from .model_config import read_manifest

    return read_manifest(repository / ORCHESTRATOR).checkpoint  # what the export read


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export.tensorrt_build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", default="model_repository", help="ONNX model repository to turn into plans")
    parser.add_argument("--checkpoint", help="checkpoint dir (default: the info the export stored in the repository)")
    parser.add_argument("--precision", type=Precision, choices=list(Precision), default=Precision.FP16,
                        help="experts' precision")
    parser.add_argument("--shape-spec", help=f"shape spec JSON (default {SHAPE_SPEC_FILE})")
    parser.add_argument("--work-dir", help="intermediate graphs and timing cache")
    parser.add_argument("--timing-cache", help="timing cache file (read and updated)")
    parser.add_argument("--workspace-gib", type=float, default=DEFAULT_WORKSPACE_BYTES / (1 << 30))
    parser.add_argument("--keep-onnx", action="store_true", help="keep the ONNX graphs next to the plans")
    args = parser.parse_args(list(argv) if argv is not None else None)
    repo = Path(args.repository)
    start = time.perf_counter()
    build_repository_engines(repo, _read_info(repo, args.checkpoint), precision=args.precision,
                             shape_spec=load_shape_spec(args.shape_spec), work_dir=args.work_dir,
                             timing_cache=args.timing_cache, keep_onnx=args.keep_onnx,
                             workspace_bytes=int(args.workspace_gib * (1 << 30)))
    print(f"TensorRT plans built in {time.perf_counter() - start:.1f}s -> {repo}")


if __name__ == "__main__":
    main()
