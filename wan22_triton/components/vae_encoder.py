"""`vae_encoder`: a picture to the VAE's latent space, for checkpoints that take an image (`image` request input).

The orchestrator preprocesses the image as diffusers' pipelines do (resize to the video's size, [-1, 1]) and sends
it as one frame (TI2V-5B) or followed by empty frames as a whole video (I2V-A14B); the encoder answers the latent
distribution's mode (diffusers' `retrieve_latents(..., sample_mode="argmax")`) in the VAE's own latent space, like
the decoder's input. Torch engine only (the export refuses the others for such checkpoints).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from wan22_triton.components.common import BATCH, LATENT, Component, ComponentSpec, Dim, TensorSpec
from wan22_triton.components.vae_decoder import LATENTS, WEIGHTS_FOLDER, vae_precision

if TYPE_CHECKING:
    from export.registry import ExportPlan
    from wan22_triton.checkpoint import CheckpointInfo

VAE_ENCODER = "vae_encoder"
ENTRY = "vae_encoder"  # wan22_triton.triton_models.vae_encoder serves it
PIXELS = "pixels"  # float32 in [-1, 1], (batch, rgb, frames, height, width): diffusers' `video_condition`


def vae_encoder_spec(info: CheckpointInfo) -> ComponentSpec:
    s = info.vae_scale_factor_spatial
    return ComponentSpec(
        name=VAE_ENCODER,
        inputs=(TensorSpec(PIXELS, "float32",
                           (BATCH, 3, Dim("video_frames"), Dim("latent_height", s), Dim("latent_width", s))),),
        outputs=(TensorSpec(LATENTS, "float32", (BATCH, info.z_dim, *LATENT)),),
        max_batch_size=1,
        sample_sizes={"batch": 1, "video_frames": 1, "latent_frames": 1, "latent_height": 4, "latent_width": 6},
    )


def export_components(plan: ExportPlan) -> list[Component]:
    """For a checkpoint that takes an image: the VAE's weights (its own copy), at the decoder's precision."""
    info, opts = plan.info, plan.opts
    if not info.takes_image:
        return []
    manifest = dataclasses.replace(plan.manifest(VAE_ENCODER, WEIGHTS_FOLDER), precision=vae_precision(opts.precision),
                                   low_memory=False)
    return [Component(VAE_ENCODER, ENTRY, lambda: vae_encoder_spec(info), manifest,
                      plan.copy_folders((WEIGHTS_FOLDER, WEIGHTS_FOLDER)), gpu_inputs=plan.gpu_inputs,
                      **plan.per_replica())]
