"""`wan22_t2v` / `wan22_t2v_stream` (`wan22_ti2v`... per family): the BLS orchestrator users call
(wan22_triton.triton_models.orchestrator).

Non-batched: its inputs are the request contract (wan22_triton.request.contract), every one of shape [1]; its
outputs the video and what produced it. The streaming variant takes the same inputs and adds `progress` (JSON
per step, pipeline.StepInfo's fields) to its responses. numpy only: the clients import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wan22_triton.checkpoint import Family
from wan22_triton.components.common import SCALAR, Component, ComponentSpec, Dim, QueuePolicy, TensorSpec
from wan22_triton.request.contract import HEIGHT, OPTIONAL_REQUEST_INPUTS, REQUEST_INPUTS, WIDTH

if TYPE_CHECKING:
    from export.registry import ExportPlan

# The model users call, named by what the checkpoint does; its streaming twin (decoupled: per-step progress, then
# the video) adds STREAM_SUFFIX.
ORCHESTRATOR_MODELS: dict[Family, str] = {
    Family.T2V_A14B: "wan22_t2v", Family.I2V_A14B: "wan22_i2v", Family.TI2V_5B: "wan22_ti2v",
    Family.WAN21_T2V: "wan22_t2v"}
STREAM_SUFFIX = "_stream"


def stream_model(model: str) -> str:
    return model + STREAM_SUFFIX


ORCHESTRATOR = ORCHESTRATOR_MODELS[Family.T2V_A14B]  # the default checkpoint's, for clients and tools
ORCHESTRATOR_STREAM = stream_model(ORCHESTRATOR)
ENTRY = "orchestrator"  # wan22_triton.triton_models.orchestrator serves both

PROGRESS = "progress"  # stream only: JSON {step, total, timestep, expert, elapsed_s} after each step
VIDEO = "video"  # uint8 (frames, height, width, rgb); output_format "frames"
VIDEO_MP4 = "video_mp4"  # the MP4's bytes; output_format "mp4"
SEED_USED = "seed_used"
STEP_TIMESTEPS = "step_timesteps"
STEP_EXPERTS = "step_experts"  # the served expert of each step
STAGE_SECONDS = "stage_seconds"  # JSON {stage: seconds}


def orchestrator_spec(family: Family = Family.T2V_A14B, stream: bool = False) -> ComponentSpec:
    """The model users call; its tensors the same for every checkpoint, its name the family's."""
    progress = (TensorSpec(PROGRESS, "object", SCALAR),) if stream else ()
    model = ORCHESTRATOR_MODELS[family]
    return ComponentSpec(
        name=stream_model(model) if stream else model,
        inputs=REQUEST_INPUTS,
        outputs=(
            *progress,
            TensorSpec(VIDEO, "uint8", (Dim("video_frames"), Dim(HEIGHT), Dim(WIDTH), 3)),  # the request's size
            TensorSpec(VIDEO_MP4, "object", SCALAR),
            TensorSpec(SEED_USED, "int64", SCALAR),
            TensorSpec(STEP_TIMESTEPS, "float32", (Dim("steps"),)),
            TensorSpec(STEP_EXPERTS, "object", (Dim("steps"),)),
            TensorSpec(STAGE_SECONDS, "object", SCALAR),
        ),
        max_batch_size=0,
    )


def export_components(plan: ExportPlan) -> list[Component]:
    """Both models, one code (the stream one decoupled). With the models on a GPU it runs there too: the denoising
    loop's tensors stay in GPU memory across the BLS calls. A repository of TensorRT plans or compiled experts
    serves its shape spec's sizes only: others are refused up front (the manifest's video_sizes)."""
    from wan22_triton.request.presets import PRESETS

    opts = plan.opts
    out = []
    for stream in (False, True):
        spec = orchestrator_spec(plan.info.family, stream)
        out.append(Component(
            spec.name, ENTRY, lambda s=spec: s,
            plan.manifest(spec.name, video_sizes=plan.video_sizes, loras=plan.loras, presets=PRESETS),
            instance_count=opts.orchestrator_instances, optional_inputs=OPTIONAL_REQUEST_INPUTS, decoupled=stream,
            queue=QueuePolicy(opts.max_queue_seconds, opts.max_queue_size), devices=plan.pipeline_devices,
        ))
    return out
