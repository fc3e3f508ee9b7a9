"""`transformer_high_noise` / `transformer_low_noise`: the two experts (T2V-A14B), or `transformer`, a checkpoint's one
transformer (TI2V-5B); one contract.

The ONNX/TensorRT contract is `transformer_spec`; the config.pbtxt of the torch engine may add optional inputs (LoRA,
workspace release, warm-up marker, or the low-memory mode's `release`) that never reach a graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wan22_triton.components.common import BATCH, LATENT, TOKENS, Component, ComponentSpec, TensorSpec, with_inputs
from wan22_triton.options import Engine

if TYPE_CHECKING:
    from export.registry import ExportPlan
    from wan22_triton.checkpoint import CheckpointInfo

TRANSFORMER_HIGH_NOISE = "transformer_high_noise"
TRANSFORMER_LOW_NOISE = "transformer_low_noise"
# Served expert name per diffusers sub-folder where there are two: `transformer` denoises high-noise steps,
# `transformer_2` low-noise.
EXPERT_MODELS = {"transformer": TRANSFORMER_HIGH_NOISE, "transformer_2": TRANSFORMER_LOW_NOISE}
TRANSFORMER = "transformer"  # a checkpoint's one transformer, every step
ENTRY = "transformer"  # wan22_triton.triton_models.transformer serves each
WEIGHTS_FOLDER = "transformer"  # in the version folder, whichever checkpoint sub-folder it came from

# The contract; the names are diffusers' WanTransformer3DModel.forward arguments and its output.
HIDDEN_STATES = "hidden_states"
TIMESTEP = "timestep"
ENCODER_HIDDEN_STATES = "encoder_hidden_states"
NOISE_PRED = "noise_pred"
INPUTS = (HIDDEN_STATES, TIMESTEP, ENCODER_HIDDEN_STATES)

# LoRA adapters (export `--lora`, wan22_triton.request.lora): the adapter of this call and its scale (absent: the
# base model).
LORA = "lora"
LORA_SCALE = "lora_scale"
LORA_INPUTS = (TensorSpec(LORA, "object", (BATCH, 1)), TensorSpec(LORA_SCALE, "float32", (BATCH, 1)))
# Workspace release (the manifest's `release_workspace`): true on the last call of an expert's run of steps for
# its request (the switch, the last step); the expert hands its PyTorch cache back after that call.
WORKSPACE_INPUT = TensorSpec("release_workspace", "bool", (BATCH, 1))
# Warm-up (`--warmup`, `--compile-artifacts`): true in Triton's warm-up samples only. The expert then runs its first
# block alone (triton_models/transformer.py): the compile, its kernels and the attention plans are the block's, which
# all 40 blocks share, so the warm-up skips 39 blocks' work whose output Triton throws away. The orchestrator never
# sends it; a direct caller that does gets the first block's output, not the expert's.
WARMUP_INPUT = TensorSpec("warmup", "bool", (BATCH, 1))
# Low-memory mode (export `low_memory`, wan22_triton.memory.offload): true sends the weights back to host memory.
RELEASE_INPUT = TensorSpec("release", "bool", (BATCH, 1))


def expert_models(info: CheckpointInfo) -> tuple[str, ...]:
    """The served expert models of a checkpoint, high-noise first; `transformer` where it has one."""
    if len(info.expert_folders) == 1:
        return (TRANSFORMER,)
    return tuple(EXPERT_MODELS[folder] for folder in info.expert_folders)


def transformer_spec(info: CheckpointInfo, name: str) -> ComponentSpec:
    """The contract both experts share; batch 2 carries cond and uncond together. `timestep`: one per batch item,
    or one per latent token where the checkpoint expands timesteps (TI2V-5B)."""
    latent = {"latent_frames": 3, "latent_height": 4, "latent_width": 6}
    return ComponentSpec(
        name=name,
        inputs=(
            TensorSpec(HIDDEN_STATES, "float32", (BATCH, info.in_channels, *LATENT)),
            TensorSpec(TIMESTEP, "float32", (BATCH, TOKENS) if info.expand_timesteps else (BATCH,),
                       sample_range=(0, info.num_train_timesteps - 1)),
            TensorSpec(ENCODER_HIDDEN_STATES, "float32", (BATCH, info.text_len, info.text_dim)),
        ),
        outputs=(TensorSpec(NOISE_PRED, "float32", (BATCH, info.out_channels, *LATENT)),),
        max_batch_size=2,
        sample_sizes={"batch": 2, **latent, TOKENS.symbol: info.tokens(*latent.values())},
    )


def transformer_offload_spec(info: CheckpointInfo, name: str) -> ComponentSpec:
    """The expert contract of the low-memory mode (config.pbtxt only): the same tensors plus `release`, all
    optional (`offload_optional_inputs`), so that a request may carry `release` alone."""
    return with_inputs(transformer_spec(info, name), RELEASE_INPUT)


def offload_optional_inputs(info: CheckpointInfo) -> frozenset[str]:
    return frozenset(t.name for t in transformer_offload_spec(info, TRANSFORMER_HIGH_NOISE).inputs)


def export_components(plan: ExportPlan) -> list[Component]:
    """Each expert: its weights (torch) or its ONNX graph (onnx; tensorrt builds a plan from it), the optional
    inputs the options call for, and a warm-up sample per compile point."""
    info, opts = plan.info, plan.opts
    warm = bool(plan.warm_points)
    extra_inputs = (*(LORA_INPUTS if opts.lora else ()),
                    *((WORKSPACE_INPUT,) if opts.release_workspace and not opts.low_memory else ()),
                    *((WARMUP_INPUT,) if warm else ()))
    out = []
    for index, (folder, name) in enumerate(zip(info.expert_folders, expert_models(info))):
        spec = transformer_spec(info, name)
        if opts.engine == Engine.TORCH:
            write, entry = plan.copy_folders((folder, WEIGHTS_FOLDER)), ENTRY
        else:  # the TensorRT build turns the ONNX graph into a plan and writes the config
            write, entry = plan.onnx_expert(folder, spec), (ENTRY if opts.engine == Engine.ONNX else None)
        if opts.lora:  # torch engine (options.check): the files; the adapter of each call comes as optional inputs
            write = plan.both(write, plan.lora_writer(index))
        manifest = plan.manifest(name, folder, speed=opts.speed, loras=tuple(s.name for s in opts.lora),
                                 compile_points=plan.compile_points)
        if plan.compile_points:  # compiled after the copy, from the version folder's weights
            write = plan.both(write, plan.compile_writer(manifest))
        served = with_inputs(spec, *extra_inputs)
        out.append(Component(
            name, entry,
            (lambda n=name: transformer_offload_spec(info, n)) if opts.low_memory else (lambda s=served: s),
            manifest, write,
            optional_inputs=(offload_optional_inputs(info) if opts.low_memory
                             else frozenset(t.name for t in extra_inputs)),
            gpu_inputs=plan.gpu_inputs, **plan.per_replica(expert=True),
            warmup=tuple((point.label, point.sizes(info)) for point in plan.warm_points),
            warmup_markers=frozenset((WARMUP_INPUT.name,) if warm else ()),
        ))
    return out
