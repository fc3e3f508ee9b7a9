"""Named sampler settings, selectable per request (`preset`): what a few-step distilled LoRA needs to work.

A preset replaces the checkpoint's defaults for the fields it names and brings its LoRA as the default adapter;
inputs a request gives still override it (`lora` "" turns its LoRA off). The export writes this table into the
orchestrators' manifest (`Manifest.presets`), so a served model uses the table it was exported with.

`lightning_4step`: Wan2.2-Lightning's T2V-A14B release (lightx2v, `Wan2.2-T2V-A14B-4steps-lora-*`: one LoRA per
expert), with its documented settings (`wan/configs/wan_t2v_A14B.py`, `generate.py` of the release): 4 steps,
`sample_guide_scale` (1.0, 1.0), i.e. no CFG on either expert, `sample_shift` 5.0, boundary 0.875 as the base
model, and the Euler flow solver it was distilled with ("Please use euler solver because it's used in
distillation"): sigmas `linspace(1, 0, steps + 1)` without the final 0, shifted, one Euler step each. That is
diffusers' `FlowMatchEulerDiscreteScheduler(shift=5.0)` given those sigmas (pipeline.make_scheduler), not the
checkpoint's UniPC. Export the release's pair under the name `lightning`:
`--lora lightning=high_noise_model.safetensors,low_noise_model.safetensors`.
"""

from __future__ import annotations

from dataclasses import dataclass

from wan22_triton.request.contract import FLOW_SHIFT, GUIDANCE_SCALE, GUIDANCE_SCALE_2, NUM_INFERENCE_STEPS

# Samplers a preset can name: `unipc`, the checkpoint's own scheduler (what requests without a preset get);
# `euler`, diffusers' FlowMatchEulerDiscreteScheduler on the Lightning release's sigma grid.
SAMPLERS = ("unipc", "euler")
DEFAULT_SAMPLER = SAMPLERS[0]


def euler_sigmas(steps: int) -> list[float]:
    """The `euler` sampler's unshifted sigmas (the release's `get_timesteps`: linspace(1000, 0, steps + 1) / 1000
    without the final 0); FlowMatchEulerDiscreteScheduler shifts them and appends the 0."""
    return [1.0 - i / steps for i in range(steps)]


@dataclass(frozen=True)
class Preset:
    name: str
    lora: str | None  # default adapter (a name exported with --lora); None: the base model
    num_inference_steps: int
    guidance_scale: float  # 1.0 on both: CFG off, one expert call per step
    guidance_scale_2: float
    flow_shift: float
    sampler: str = DEFAULT_SAMPLER
    lora_scale: float = 1.0

    def settings(self) -> dict[str, float | int]:
        """The request settings this preset sets (validation.validate_request overlays them on the defaults)."""
        return {NUM_INFERENCE_STEPS: self.num_inference_steps, GUIDANCE_SCALE: self.guidance_scale,
                GUIDANCE_SCALE_2: self.guidance_scale_2, FLOW_SHIFT: self.flow_shift}


PRESETS: tuple[Preset, ...] = (
    Preset("lightning_4step", lora="lightning", num_inference_steps=4, guidance_scale=1.0, guidance_scale_2=1.0,
           flow_shift=5.0, sampler="euler"),
)


def find_preset(presets: tuple[Preset, ...], name: str) -> Preset | None:
    return next((p for p in presets if p.name == name), None)
