"""Turn a Wan2.2 T2V diffusers checkpoint directory into a ready Triton model repository.

Tracked in the repository: each model's thin `1/model.py`. Written here (git-ignored): every `config.pbtxt` and
the artifacts under `<model>/1/` (diffusers sub-folders for the `torch` engine, ONNX graphs for `onnx`).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from wan22_triton import components as C
from wan22_triton.checkpoint import CheckpointInfo, read_checkpoint

from wan22_triton.vae_frames import load_cache_layout

from .model_config import build_model_config, to_pbtxt

ENGINES = ("torch", "onnx", "tensorrt")
# Entry point of a model that runs one ONNX graph (ENGINE=onnx; these models exist only for that engine).
ONNX_GRAPH_MODEL_PY = "from wan22_triton.triton_models.onnx_graph import TritonPythonModel  # noqa: F401\n"


@dataclass(frozen=True)
class ExportOptions:
    engine: str = "torch"
    device: str = "cpu"  # where the component models run: cpu | gpu
    precision: str = "fp32"  # torch engine: fp32 on CPU; bf16/fp16 on GPU
    min_num_frames: int = 1
    max_num_frames: int = 161
    min_size: int = 16
    max_size: int = 1280
    max_inference_steps: int = 100
    orchestrator_instances: int = 1
    max_queue_seconds: int = 0  # 0: no limit; else requests waiting longer are rejected
    max_request_seconds: int = 0  # 0: no limit; else generation stops between steps once exceeded
    shape_spec: str | None = None  # ENGINE=tensorrt: JSON of the video sizes to build profiles for
    # ENGINE=torch: experts and text encoder keep their weights in host memory, on the GPU only while they work
    # (config parameter `offload: "cpu"`, the experts' optional `release` input; see wan22_triton/offload.py)
    low_memory: bool = False
    # ENGINE=torch speed options of the experts (wan22_triton/fast_path.py), written as their config parameters:
    # compile "regional"; quantization "fp8_rowwise" and attention "fp8_cudnn" / "flash_attn_4" (GPU, Hopper+)
    compile: str = "none"
    quantization: str = "none"
    attention: str = "sdpa"

    def expert_speed_parameters(self) -> dict[str, str]:
        """The experts' speed parameters that differ from the defaults, checked against this export."""
        from wan22_triton.fast_path import ATTENTIONS, COMPILE_MODES, QUANTIZATIONS

        chosen = {"compile": (self.compile, COMPILE_MODES), "quantization": (self.quantization, QUANTIZATIONS),
                  "attention": (self.attention, ATTENTIONS)}
        out = {}
        for name, (value, allowed) in chosen.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
            if value != allowed[0]:
                out[name] = value
        if out and self.engine != "torch":
            raise ValueError(f"{', '.join(out)} need engine 'torch', got {self.engine!r}")
        if (self.quantization != "none" or self.attention != "sdpa") and self.device != "gpu":
            raise ValueError("FP8 quantization and the attention kernels need --device gpu")
        if self.low_memory and self.quantization != "none":
            raise ValueError("low_memory does not support quantization (torchao's FP8 weights are not plain storage)")
        return out


def _copy_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.bin", "*.pt", "*.pth", "*.ckpt"))


def _move_graph(src: Path, dst: Path) -> None:
    """Move an ONNX graph; its external-data file keeps its name, which the graph refers to."""
    data = src.with_name(src.name + ".data")
    src.rename(dst)
    if data.exists():
        data.rename(dst.with_name(data.name))


def _clean_version_dir(model_dir: Path) -> Path:
    """Empty `<model>/1/` of generated files, keeping the tracked model.py."""
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    for child in version.iterdir():
        if child.name == "model.py":
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    return version


def orchestrator_parameters(info: CheckpointInfo, opts: ExportOptions) -> dict[str, Any]:
    """Everything the orchestrator derives from the checkpoint, as config parameters (read back by
    `triton_models.orchestrator.pipeline_config_from_parameters`)."""
    scheduler_config = json.loads((Path(info.path) / "scheduler" / "scheduler_config.json").read_text())
    defaults = {
        "negative_prompt": "",
        "num_frames": info.default_num_frames,
        "height": info.default_height,
        "width": info.default_width,
        "num_inference_steps": info.defaults["num_inference_steps"],
        "guidance_scale": info.defaults["guidance_scale"],
        "guidance_scale_2": info.defaults["guidance_scale_2"],
        "flow_shift": scheduler_config.get("flow_shift", 1.0),
    }
    return {
        "scheduler_config": scheduler_config,
        "boundary_ratio": info.boundary_ratio,
        "expert_models": [C.EXPERT_MODELS[n] for n in info.expert_names],
        "latent_channels": info.in_channels,
        "vae_scale_factor_temporal": info.vae_scale_factor_temporal,
        "vae_scale_factor_spatial": info.vae_scale_factor_spatial,
        "spatial_multiple": info.spatial_multiple,
        "latents_mean": list(info.latents_mean),
        "latents_std": list(info.latents_std),
        "fps": info.defaults["fps"],
        "min_num_frames": opts.min_num_frames,
        "max_num_frames": opts.max_num_frames,
        "min_size": opts.min_size,
        "max_size": opts.max_size,
        "max_inference_steps": opts.max_inference_steps,
        "max_request_seconds": opts.max_request_seconds,
        **({"video_sizes": _video_sizes(opts.shape_spec)} if opts.engine == "tensorrt" else {}),
        **({"low_memory": "true"} if opts.low_memory else {}),
        # JSON, strings included, so the orchestrator reads every default back with its type.
        **{f"default_{k}": json.dumps(v) for k, v in defaults.items()},
    }


def _video_sizes(shape_spec: str | None) -> list[list[int]]:
    """(frames, height, width) the TensorRT profiles cover; the orchestrator rejects others up front."""
    from .tensorrt_build import load_shape_spec

    spec = load_shape_spec(shape_spec)
    return [[f, h, w] for f in spec.num_frames for (h, w) in spec.resolutions]


def _write_config(model_dir: Path, config) -> None:
    (model_dir / "config.pbtxt").write_text(to_pbtxt(config))


def export_repository(
    checkpoint: str | Path,
    repository: str | Path,
    opts: ExportOptions = ExportOptions(),
    log: Callable[[str], None] = print,
) -> CheckpointInfo:
    if opts.engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {opts.engine!r}")
    if opts.low_memory and opts.engine != "torch":
        raise ValueError(f"low_memory needs engine 'torch' (weights the Python model can move), got {opts.engine!r}")
    offload = {"offload": "cpu"} if opts.low_memory else {}
    speed = opts.expert_speed_parameters()
    info = read_checkpoint(checkpoint)
    ckpt, repo = Path(info.path), Path(repository)
    kind = "KIND_GPU" if opts.device == "gpu" else "KIND_CPU"
    common = {"engine": opts.engine, "precision": opts.precision}
    # Python models on a GPU take GPU inputs as they come (the GPU orchestrator's BLS tensors), not copied to the host.
    gpu_inputs = {"FORCE_CPU_ONLY_INPUT_TENSORS": "no"} if opts.engine == "torch" and opts.device == "gpu" else {}
    log(f"export {ckpt} -> {repo} (engine {opts.engine}, {opts.device}, {opts.precision}"
        f"{', low memory' if opts.low_memory else ''})")

    # text_encoder: always a Python-backend model (tokenizer + UMT5).
    t0 = time.perf_counter()
    model_dir = repo / C.TEXT_ENCODER
    version = _clean_version_dir(model_dir)
    _copy_tree(ckpt / "text_encoder", version / "text_encoder")
    _copy_tree(ckpt / "tokenizer", version / "tokenizer")
    spec = C.text_encoder_spec(info)
    params = {"precision": opts.precision, "text_len": info.text_len, **offload}
    _write_config(model_dir, build_model_config(spec, instance_kind=kind, parameters=params))
    log(f"  {C.TEXT_ENCODER}: {time.perf_counter() - t0:.1f}s")

    # The experts: one contract, one artifact each (diffusers folder for torch, ONNX graph for onnx and tensorrt).
    for folder in info.expert_names:
        t0 = time.perf_counter()
        name = C.EXPERT_MODELS[folder]
        model_dir = repo / name
        version = _clean_version_dir(model_dir)
        spec = C.transformer_spec(info, name)
        if opts.engine == "torch":
            _copy_tree(ckpt / folder, version / "transformer")
        else:
            from .onnx_export import export_transformer, load_transformer

            export_transformer(load_transformer(ckpt / folder), spec, version / "model.onnx")
        if opts.low_memory:  # same tensors plus the optional `release`, all optional (components.py)
            config = build_model_config(
                C.transformer_offload_spec(info, name), instance_kind=kind,
                parameters={**common, **speed, **gpu_inputs, **offload},
                optional_inputs=C.transformer_offload_optional_inputs(info),
            )
            _write_config(model_dir, config)
        elif opts.engine != "tensorrt":  # plans get their configs from the TensorRT build
            config = build_model_config(spec, instance_kind=kind, parameters={**common, **speed, **gpu_inputs})
            _write_config(model_dir, config)
        log(f"  {name}: {time.perf_counter() - t0:.1f}s")

    # vae_decoder: diffusers decode (torch), or a loop over the first-frame/step graph pair, each its own model.
    t0 = time.perf_counter()
    model_dir = repo / C.VAE_DECODER
    version = _clean_version_dir(model_dir)
    for frame_model in C.VAE_DECODER_FRAME_MODELS:  # only the onnx and tensorrt engines serve them
        if (repo / frame_model).exists():
            shutil.rmtree(repo / frame_model)
    if opts.engine == "torch":
        _copy_tree(ckpt / "vae", version / "vae")
    else:
        from .onnx_export import export_vae_decoder_frames, load_vae

        first_path, step_path = export_vae_decoder_frames(load_vae(ckpt / "vae"), info, version)
        info.save(version)  # the serving model rebuilds the frame specs from it
        if opts.engine == "onnx":
            frame_specs = C.vae_decoder_frame_specs(info, load_cache_layout(version))
            for graph, frame_spec in zip((first_path, step_path), frame_specs):
                version_dir = repo / frame_spec.name / "1"
                version_dir.mkdir(parents=True)
                _move_graph(Path(graph), version_dir / "model.onnx")
                (version_dir / "model.py").write_text(ONNX_GRAPH_MODEL_PY)
                _write_config(repo / frame_spec.name, build_model_config(frame_spec, instance_kind=kind, parameters=common))
    vae_params = dict(common, **gpu_inputs, precision="fp32" if opts.precision == "fp16" else opts.precision)
    _write_config(model_dir, build_model_config(C.vae_decoder_spec(info), instance_kind=kind, parameters=vae_params))
    log(f"  {C.VAE_DECODER}: {time.perf_counter() - t0:.1f}s")

    if opts.engine == "tensorrt":
        from .tensorrt_build import build_repository_engines, load_shape_spec, tensorrt_available

        if not tensorrt_available():
            raise RuntimeError(
                "ENGINE=tensorrt needs TensorRT's Python builder (`import tensorrt` failed): the ONNX graphs are "
                f"exported under {repo}; build the plans in the export image (make docker-export)"
            )
        build_repository_engines(repo, info, precision=opts.precision, shape_spec=load_shape_spec(opts.shape_spec), log=log)

    # wan22_t2v and wan22_t2v_stream: the BLS orchestrator (one code, the stream one decoupled). With the models
    # on a GPU it runs there too: the denoising loop's tensors stay in GPU memory across the BLS calls.
    parameters = orchestrator_parameters(info, opts)
    for stream in (False, True):
        spec = C.orchestrator_spec(info, stream=stream)
        model_dir = repo / spec.name
        version = _clean_version_dir(model_dir)
        config = build_model_config(
            spec,
            instance_kind=kind,
            instance_count=opts.orchestrator_instances,
            parameters=parameters,
            optional_inputs=C.OPTIONAL_REQUEST_INPUTS,
            decoupled=stream,
            max_queue_seconds=opts.max_queue_seconds,
        )
        _write_config(model_dir, config)
        info.save(version)
        log(f"  {spec.name}: config written")
    return info
