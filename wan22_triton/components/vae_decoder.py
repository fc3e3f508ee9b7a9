"""`vae_decoder` and, for the ONNX and TensorRT engines, the two frame graphs it drives over BLS.

Wan's VAE decodes latent frames one by one, each causal convolution reading the previous frames' features; a graph
traced for one frame count would bake that loop in. With the caches as explicit inputs and outputs the same two
graphs (`vae_decoder_first_frame`, then `vae_decoder_step` per latent frame) serve every frame count, and memory
stays at one frame's worth of features (wan22_triton.engines.vae_frames).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Iterable

from wan22_triton.components.common import BATCH, LATENT, CacheEntry, Component, ComponentSpec, Dim, TensorSpec
from wan22_triton.options import Engine, Precision

if TYPE_CHECKING:
    from export.registry import ExportPlan
    from wan22_triton.checkpoint import CheckpointInfo

VAE_DECODER = "vae_decoder"
VAE_DECODER_FRAME_MODELS = ("vae_decoder_first_frame", "vae_decoder_step")
ENTRY = "vae_decoder"  # wan22_triton.triton_models.vae_decoder serves it
FRAME_GRAPH_ENTRY = "onnx_graph"  # wan22_triton.triton_models.onnx_graph serves a frame graph in ONNX Runtime
WEIGHTS_FOLDER = "vae"  # the checkpoint's sub-folder, copied under the same name

LATENTS = "latents"  # de-normalised, (batch, z, latent frames, latent height, latent width)
VIDEO = "video"  # float32 in [-1, 1], (batch, rgb, frames, height, width): what diffusers' decode returns
FRAMES = "frames"  # uint8 (batch, frames, height, width, rgb); in the frame graphs: float32 like `video`
OUTPUTS = (VIDEO, FRAMES)
# The frame graphs: one latent frame in, its video frames out, and one cache per causal convolution.
LATENT_FRAME = "latent_frame"
CACHE_IN, CACHE_OUT = "cache_in", "cache_out"  # name prefixes: cache_in_0, ...


def vae_decoder_spec(info: CheckpointInfo) -> ComponentSpec:
    """Only the outputs a caller asks for are made; the orchestrator asks for `frames`, converted where the decoder
    runs (a quarter of the bytes to move)."""
    s = info.vae_scale_factor_spatial
    height, width = Dim("latent_height", s), Dim("latent_width", s)
    return ComponentSpec(
        name=VAE_DECODER,
        inputs=(TensorSpec(LATENTS, "float32", (BATCH, info.z_dim, *LATENT)),),
        outputs=(
            TensorSpec(VIDEO, "float32", (BATCH, 3, Dim("video_frames"), height, width)),
            TensorSpec(FRAMES, "uint8", (BATCH, Dim("video_frames"), height, width, 3)),
        ),
        max_batch_size=1,
        sample_sizes={"batch": 1, "latent_frames": 3, "latent_height": 4, "latent_width": 6},
    )


def vae_decoder_frame_specs(info: CheckpointInfo, caches: Iterable[CacheEntry]) -> tuple[ComponentSpec, ComponentSpec]:
    """The two graphs behind `vae_decoder` for ONNX and TensorRT: the first latent frame, then one frame per step."""
    caches = tuple(caches)
    s, t = info.vae_scale_factor_spatial, info.vae_scale_factor_temporal
    latent_frame = TensorSpec(LATENT_FRAME, "float32", (BATCH, info.z_dim, 1, *LATENT[1:]))

    def cache_specs(prefix: str) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(f"{prefix}_{i}", "float32",
                                (BATCH, c.channels, 2, Dim("latent_height", c.scale), Dim("latent_width", c.scale)))
                     for i, c in enumerate(caches))

    def frames(n: int) -> TensorSpec:
        return TensorSpec(FRAMES, "float32", (BATCH, 3, n, Dim("latent_height", s), Dim("latent_width", s)))

    sizes = {"batch": 1, "latent_height": 4, "latent_width": 6}
    first_name, step_name = VAE_DECODER_FRAME_MODELS
    first = ComponentSpec(first_name, (latent_frame,), (frames(1), *cache_specs(CACHE_OUT)), 1, sizes)
    step = ComponentSpec(
        step_name, (latent_frame, *cache_specs(CACHE_IN)), (frames(t), *cache_specs(CACHE_OUT)), 1, sizes
    )
    return first, step


def vae_precision(precision: Precision) -> Precision:
    """The VAE decoder's precision: FP32 in an FP16 export, else the export's."""
    return Precision.FP32 if precision == Precision.FP16 else precision


def export_components(plan: ExportPlan) -> list[Component]:
    """diffusers' decode (torch: the VAE's weights), or a loop over the first-frame/step graph pair, each graph its
    own model (ONNX Runtime serves it, or the TensorRT build's plan). Warm-up: a video per compile point."""
    info, opts = plan.info, plan.opts
    precision = vae_precision(opts.precision)
    manifest = dataclasses.replace(plan.manifest(VAE_DECODER, WEIGHTS_FOLDER), precision=precision,
                                   cudnn_benchmark=opts.vae_cudnn_benchmark, low_memory=False)
    write = (plan.copy_folders((WEIGHTS_FOLDER, WEIGHTS_FOLDER)) if opts.engine == Engine.TORCH
             else plan.onnx_vae_frames(WEIGHTS_FOLDER))
    warmup = {f"{p.num_frames}x{p.height}x{p.width}": {**p.sizes(info), "batch": 1}  # a video a call
              for p in plan.warm_points}
    out = [Component(VAE_DECODER, ENTRY, lambda: vae_decoder_spec(info), manifest, write,
                     gpu_inputs=plan.gpu_inputs, warmup=tuple(warmup.items()), **plan.per_replica())]
    if opts.engine == Engine.TORCH:
        return out
    version = plan.repository / VAE_DECODER / "1"
    for index, frame_model in enumerate(VAE_DECODER_FRAME_MODELS):
        def frame_spec(i: int = index) -> ComponentSpec:
            return vae_decoder_frame_specs(info, plan.cache_layout(version))[i]

        out.append(Component(
            frame_model, FRAME_GRAPH_ENTRY if opts.engine == Engine.ONNX else None, frame_spec,
            dataclasses.replace(plan.manifest(frame_model), low_memory=False),
            plan.move_graph(version / f"{frame_model}.onnx"),
            # TensorRT plans: the build writes their configs, KIND_GPU on the replicas' first GPUs, one version
            **(plan.per_replica() if opts.engine == Engine.ONNX else dict(devices=plan.pipeline_devices)),
        ))
    return out
