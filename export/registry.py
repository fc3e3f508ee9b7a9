"""The served models as the export makes them: one `Component` each, listed by `repository_components`.

A component names its served model, the `wan22_triton.triton_models` module its generated `model.py` imports, its
declaration (wan22_triton.components), the manifest it is served with and how its artifacts are written for the
chosen engine. The export loops over the list; nothing else knows which model needs what.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from wan22_triton import components as C
from wan22_triton.checkpoint import CheckpointInfo
from wan22_triton.components import ComponentSpec
from wan22_triton.engines.onnx_runner import ONNX_GRAPH
from wan22_triton.manifest import Manifest
from wan22_triton.request.presets import PRESETS
from wan22_triton.engines.random_weights import component_seed
from wan22_triton.engines.vae_frames import load_cache_layout

from .compile_artifacts import compile_points, compile_writer
from .loras import expert_lora_writer
from .options import ExportOptions

ArtifactWriter = Callable[[Path], None]  # fills the model's version folder


@dataclass(frozen=True)
class Component:
    name: str
    # wan22_triton.triton_models.<entry> serves it; None: a TensorRT plan, whose config the TensorRT build writes
    entry: str | None
    spec: Callable[[], ComponentSpec]  # called once the artifacts exist (the VAE frame graphs' caches)
    manifest: Manifest
    write_artifacts: ArtifactWriter = lambda version: None
    instance_count: int = 1  # per device
    devices: tuple[int, ...] = (0,)  # where its instances go (parallel plan): GPU ids, or one CPU instance each
    # > 1: a version per replica, version r + 1 on replica r's `devices` (those of replica 0 listed; the model
    # places its instances itself: KIND_MODEL, wan22_triton.parallel.plan)
    versions: int = 1
    optional_inputs: frozenset[str] = frozenset()
    decoupled: bool = False
    max_queue_seconds: int = 0
    gpu_inputs: bool = False  # takes CUDA tensors from a GPU caller as they come (FORCE_CPU_ONLY_INPUT_TENSORS no)
    # Triton's model_warmup: (sample name, symbol values incl. batch) each, run before the model is READY
    warmup: tuple[tuple[str, Mapping[str, int]], ...] = ()
    warmup_markers: frozenset[str] = frozenset()  # optional BOOL inputs true in the warm-up samples only


def copy_folders(*folders: tuple[Path, str]) -> ArtifactWriter:
    """Checkpoint sub-folders copied into the version folder under the given names (weights as safetensors only)."""

    def write(version: Path) -> None:
        for src, name in folders:
            shutil.copytree(src, version / name, ignore=shutil.ignore_patterns("*.bin", "*.pt", "*.pth", "*.ckpt"))

    return write


def _both(*writers: ArtifactWriter) -> ArtifactWriter:
    def write(version: Path) -> None:
        for writer in writers:
            writer(version)

    return write


def _onnx_expert(folder: Path, spec: ComponentSpec) -> ArtifactWriter:
    def write(version: Path) -> None:
        from .onnx_export import export_transformer, load_transformer

        export_transformer(load_transformer(folder), spec, version / ONNX_GRAPH)

    return write


def _onnx_vae_frames(folder: Path, info: CheckpointInfo) -> ArtifactWriter:
    """The VAE decoder's two frame graphs and their cache layout, into the `vae_decoder` version folder."""

    def write(version: Path) -> None:
        from .onnx_export import export_vae_decoder_frames, load_vae

        export_vae_decoder_frames(load_vae(folder), info, version)

    return write


def _move_graph(src: Path) -> ArtifactWriter:
    """A frame graph exported beside `vae_decoder` moved into its own model (external data keeps its name)."""

    def write(version: Path) -> None:
        data = src.with_name(src.name + ".data")
        src.rename(version / ONNX_GRAPH)
        if data.exists():
            data.rename(version / data.name)

    return write


def repository_components(info: CheckpointInfo, opts: ExportOptions, repository: Path,
                          log: Callable[[str], None] = print) -> list[Component]:
    """Every model of the repository for this checkpoint and these options, in the order they must be written."""
    ckpt = Path(info.path)
    gpu_inputs = opts.engine == "torch" and opts.device == "gpu"
    plan = opts.parallel
    pipeline_devices = tuple(plan.pipeline_devices())  # the orchestrator: one per replica
    # the text encoder, experts and VAE: a version per replica, each on its replica's devices
    per_replica = dict(versions=plan.replicas, devices=tuple(plan.replica_devices(0, expert=False)))
    expert_per_replica = dict(per_replica, devices=tuple(plan.replica_devices(0, expert=True)))

    def manifest(name: str, folder: str | None = None, **fields) -> Manifest:
        seed = opts.random_weights_seed
        return Manifest(
            model=name, engine=opts.engine, precision=opts.precision, checkpoint=info, low_memory=opts.low_memory,
            release_workspace=opts.release_workspace, limits=opts.limits, parallel=opts.parallel, random_weights_seed=component_seed(seed, folder) if seed is not None and folder else None,
            **fields,
        )

    points = compile_points(opts) if opts.compile_artifacts else ()  # torch engine with compile (options.check)
    # With a warm-up the server is READY only at full speed: every model's first call runs in its warm-up (the
    # experts' compiles and first kernels, the VAE's cuDNN autotuning per size, the text encoder's first kernels).
    warm_points = compile_points(opts) if opts.warms_up else ()
    text_warmup = (("prompts", {"batch": C.text_encoder_spec(info).max_batch_size}),) if warm_points else ()
    text_manifest = dataclasses.replace(manifest(C.TEXT_ENCODER, "text_encoder"),
                                        low_memory=opts.low_memory or opts.text_encoder_offload)
    out = [Component(
        C.TEXT_ENCODER, "text_encoder", lambda: C.text_encoder_spec(info), text_manifest,
        copy_folders((ckpt / "text_encoder", "text_encoder"), (ckpt / "tokenizer", "tokenizer")),
        warmup=text_warmup, **per_replica,
    )]

    loras = tuple(source.name for source in opts.lora)
    # optional expert inputs: each call's adapter; the last call of an expert's steps (low memory has its own)
    extra_inputs = (*(C.EXPERT_LORA_INPUTS if opts.lora else ()),
                    *((C.EXPERT_WORKSPACE_INPUT,) if opts.release_workspace and not opts.low_memory else ()),
                    *((C.EXPERT_WARMUP_INPUT,) if warm_points else ()))
    for folder, name in zip(info.expert_folders, C.expert_models(info)):
        spec = C.transformer_spec(info, name)
        if opts.engine == "torch":
            write, entry = copy_folders((ckpt / folder, "transformer")), "transformer"
        else:  # the TensorRT build turns the ONNX graph into a plan and writes the config
            write, entry = _onnx_expert(ckpt / folder, spec), ("transformer" if opts.engine == "onnx" else None)
        if opts.lora:  # torch engine (options.check): the files; the adapter of each call comes as optional inputs
            write = _both(write, expert_lora_writer(opts.lora, info.expert_folders.index(folder)))
        spec = C.with_inputs(spec, *extra_inputs)
        expert_manifest = manifest(name, folder, speed=opts.speed, loras=loras, compile_points=points)
        if points:  # compiled after the copy, from the version folder's weights
            write = _both(write, compile_writer(expert_manifest, opts.device, log))
        low_memory = opts.low_memory  # the same tensors plus an optional `release`, all optional (components.py)
        out.append(Component(
            name, entry, (lambda n=name: C.transformer_offload_spec(info, n)) if low_memory else (lambda s=spec: s),
            expert_manifest, write,
            optional_inputs=(C.transformer_offload_optional_inputs(info) if low_memory
                             else frozenset(t.name for t in extra_inputs)),
            gpu_inputs=gpu_inputs, **expert_per_replica,
            warmup=tuple((point.label, point.sizes(info)) for point in warm_points),
            warmup_markers=frozenset((C.EXPERT_WARMUP_INPUT.name,) if warm_points else ()),
        ))

    # vae_decoder: diffusers' decode (torch), or a loop over the first-frame/step graph pair, each its own model.
    vae_precision = "fp32" if opts.precision == "fp16" else opts.precision
    vae_manifest = dataclasses.replace(manifest(C.VAE_DECODER, "vae"), precision=vae_precision,
                                       cudnn_benchmark=opts.vae_cudnn_benchmark, low_memory=False)
    vae_write = copy_folders((ckpt / "vae", "vae")) if opts.engine == "torch" else _onnx_vae_frames(ckpt / "vae", info)
    sizes = {f"{p.num_frames}x{p.height}x{p.width}": {**p.sizes(info), "batch": 1}  # a video a call
             for p in warm_points}
    out.append(Component(C.VAE_DECODER, "vae_decoder", lambda: C.vae_decoder_spec(info), vae_manifest, vae_write,
                         gpu_inputs=gpu_inputs, warmup=tuple(sizes.items()), **per_replica))
    if opts.engine != "torch":  # each frame graph its own model: ONNX Runtime serves it, or the TensorRT build's plan
        vae_version = repository / C.VAE_DECODER / "1"
        for index, frame_model in enumerate(C.VAE_DECODER_FRAME_MODELS):
            def frame_spec(i: int = index) -> ComponentSpec:
                return C.vae_decoder_frame_specs(info, load_cache_layout(vae_version))[i]

            out.append(Component(
                frame_model, "onnx_graph" if opts.engine == "onnx" else None, frame_spec,
                dataclasses.replace(manifest(frame_model), low_memory=False),
                _move_graph(vae_version / f"{frame_model}.onnx"),
                # TensorRT plans: the build writes their configs, KIND_GPU on the replicas' first GPUs, one version
                **(per_replica if opts.engine == "onnx" else dict(devices=pipeline_devices)),
            ))

    # wan22_t2v and wan22_t2v_stream: the BLS orchestrator (one code, the stream one decoupled). With the models on
    # a GPU it runs there too: the denoising loop's tensors stay in GPU memory across the BLS calls.
    # TensorRT plans and compiled experts serve their shape spec's sizes only: others are refused up front.
    video_sizes = _video_sizes(opts.shape_spec) if opts.engine == "tensorrt" or opts.compile_artifacts else None
    for stream in (False, True):
        spec = C.orchestrator_spec(info, stream=stream)
        out.append(Component(
            spec.name, "orchestrator", lambda s=spec: s,
            manifest(spec.name, video_sizes=video_sizes, loras=loras, presets=PRESETS),
            instance_count=opts.orchestrator_instances, optional_inputs=C.OPTIONAL_REQUEST_INPUTS, decoupled=stream,
            max_queue_seconds=opts.max_queue_seconds, devices=pipeline_devices,
        ))
    return out


def _video_sizes(shape_spec: str | None) -> tuple[tuple[int, int, int], ...]:
    """(frames, height, width) the TensorRT profiles or the compile points cover; the orchestrator rejects others."""
    from .tensorrt_build import load_shape_spec

    spec = load_shape_spec(shape_spec)
    return tuple((f, h, w) for f in spec.num_frames for (h, w) in spec.resolutions)
