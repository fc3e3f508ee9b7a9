"""`wan22_t2v`: the BLS orchestrator users call. pb_utils I/O only; the request path is `pipeline.Wan22T2VPipeline`."""

from __future__ import annotations

import json

import numpy as np

from .. import triton_io
from ..components import TEXT_ENCODER, VAE_DECODER
from ..pipeline import Limits, PipelineConfig, Wan22T2VPipeline, validate_request


def pipeline_config_from_parameters(params: dict[str, str]) -> PipelineConfig:
    """Inverse of the export's `orchestrator_parameters`: every value the export derived from the checkpoint."""
    defaults = {k[len("default_"):]: json.loads(v) for k, v in params.items() if k.startswith("default_")}
    return PipelineConfig(
        scheduler_config=json.loads(params["scheduler_config"]),
        boundary_ratio=json.loads(params["boundary_ratio"]),
        expert_names=tuple(json.loads(params["expert_models"])),
        latent_channels=int(params["latent_channels"]),
        vae_scale_factor_temporal=int(params["vae_scale_factor_temporal"]),
        vae_scale_factor_spatial=int(params["vae_scale_factor_spatial"]),
        spatial_multiple=int(params["spatial_multiple"]),
        latents_mean=tuple(json.loads(params["latents_mean"])),
        latents_std=tuple(json.loads(params["latents_std"])),
        defaults=defaults,
        limits=Limits(**{k: int(params[k]) for k in Limits.__dataclass_fields__}),
    )


def bls_text_encoder(prompts: list[str]) -> np.ndarray:
    text = np.array([[p.encode("utf-8")] for p in prompts], dtype=object)
    return triton_io.bls_infer(TEXT_ENCODER, {"text": text}, ["prompt_embeds"])["prompt_embeds"]


def bls_expert(model: str, latents: np.ndarray, timestep: np.ndarray, embeds: np.ndarray) -> np.ndarray:
    # timestep travels as [B, 1]; the config's reshape hands the model the declared [B]
    inputs = {"hidden_states": latents, "timestep": timestep.reshape(-1, 1), "encoder_hidden_states": embeds}
    return triton_io.bls_infer(model, inputs, ["noise_pred"])["noise_pred"]


def bls_vae_decoder(latents: np.ndarray) -> np.ndarray:
    return triton_io.bls_infer(VAE_DECODER, {"latents": latents}, ["video"])["video"]


class TritonPythonModel:
    def initialize(self, args):
        pb = triton_io.pb_utils()
        self.logger = pb.Logger
        self.model_config = json.loads(args["model_config"])
        self.config = pipeline_config_from_parameters(triton_io.parameters(self.model_config))
        self.input_names = [i["name"] for i in self.model_config["input"]]
        self.pipeline = Wan22T2VPipeline(self.config, bls_text_encoder, bls_expert, bls_vae_decoder)
        self.logger.log_info(f"wan22_t2v ready: experts {self.config.expert_names}, defaults {self.config.defaults}")

    def execute(self, requests):
        return triton_io.execute_each(requests, self._generate, self.logger)

    def _generate(self, request):
        req = validate_request(triton_io.request_inputs(request, self.input_names), self.config)
        self.logger.log_info(
            f"generate {req.num_frames}x{req.height}x{req.width}, {req.num_inference_steps} steps, seed {req.seed}"
        )
        result = self.pipeline(req, is_cancelled=request.is_cancelled)
        self.logger.log_info(
            "stages: " + ", ".join(f"{k} {v:.3f}s" for k, v in result.stage_seconds.items())
        )
        return triton_io.response(
            {
                "video": result.video,
                "seed_used": np.array([result.seed], dtype=np.int64),
                "step_timesteps": np.array(result.timesteps, dtype=np.float32),
                "step_experts": np.array([e.encode() for e in result.experts], dtype=object),
                "stage_seconds": np.array([json.dumps(result.stage_seconds).encode()], dtype=object),
            }
        )
