"""The Wan2.2 family beyond T2V-A14B: TI2V-5B's text-to-video from its diffusers layout (the tiny stand-in), told
from its configs, exported and served by a real tritonserver against diffusers' WanPipeline (`expand_timesteps`:
a timestep per latent token), and the modes it is not served with yet refused at export.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from clients import grpc_client
from export.loras import LoraSource
from export.options import ExportOptions
from export.repository import export_repository
from wan22_triton.checkpoint import Family, read_checkpoint
from wan22_triton.components.common import CompilePoint
from wan22_triton.components.expert import TIMESTEP, expert_models, transformer_spec
from wan22_triton.components.orchestrator import ORCHESTRATOR_MODELS, STEP_EXPERTS, stream_model
from wan22_triton.options import Engine
from wan22_triton.parallel.plan import ParallelPlan

from .conftest import TEST_LIMITS, psnr, run_diffusers

# Not the family's defaults (50 steps, guidance 5.0, 121x704x1280): a size the tiny model decodes in a second,
# and a guidance scale a server ignoring it would miss.
REQUEST = dict(prompt="a red panda in the snow", negative_prompt="blurry", num_frames=9, height=32, width=64,
               num_inference_steps=4, guidance_scale=6.0, seed=7)
PARITY_DB = 60.0
TI2V = ORCHESTRATOR_MODELS[Family.TI2V_5B]


@pytest.fixture(scope="module")
def ti2v_checkpoint(tmp_path_factory) -> Path:
    from devtools.tiny_checkpoint import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("ti2v") / "tiny-wan2.2-ti2v-5b", Family.TI2V_5B)


@pytest.fixture(scope="module")
def ti2v_server(served, ti2v_checkpoint):
    options = ExportOptions(limits=TEST_LIMITS)
    return served(repository=lambda folder: export_repository(ti2v_checkpoint, folder, options, log=lambda _: None))


def test_the_family_comes_from_the_configs_not_the_folder_name(ti2v_checkpoint, tiny_checkpoint, tmp_path):
    misnamed = shutil.copytree(ti2v_checkpoint, tmp_path / tiny_checkpoint.name)  # the T2V folder's name
    info = read_checkpoint(misnamed)
    assert info.family == Family.TI2V_5B and read_checkpoint(tiny_checkpoint).family == Family.T2V_A14B
    assert info.expand_timesteps and info.boundary_timestep is None and info.expert_folders == ("transformer",)
    # the Wan2.2 VAE's configs: 48 channels, 16x spatial; with the 2x2 patch, sizes go by 32
    assert (info.z_dim, info.in_channels, info.vae_scale_factor_spatial, info.spatial_multiple) == (48, 48, 16, 32)
    assert info.latent_shape(121, 704, 1280) == (48, 31, 44, 80) and info.tokens(31, 44, 80) == 31 * 22 * 40
    # the release's published defaults; the flow shift is its scheduler's
    assert (info.default_num_frames, info.default_height, info.default_width) == (121, 704, 1280)
    assert (info.generation.num_inference_steps, info.generation.guidance_scale, info.generation.fps) == (50, 5.0, 24)
    assert info.request_defaults["flow_shift"] == 5.0


def test_the_expert_takes_a_timestep_per_latent_token(ti2v_checkpoint, tiny_checkpoint):
    point = CompilePoint(9, 32, 64, 2)
    info = read_checkpoint(ti2v_checkpoint)
    [name] = expert_models(info)
    spec = transformer_spec(info, name)
    timestep = next(t for t in spec.inputs if t.name == TIMESTEP)
    assert timestep.resolve(point.sizes(info)) == (2, 3 * 1 * 2)  # 3 latent frames x (2/2) x (4/2)
    t2v = read_checkpoint(tiny_checkpoint)
    t2v_timestep = next(t for t in transformer_spec(t2v, expert_models(t2v)[0]).inputs if t.name == TIMESTEP)
    assert t2v_timestep.resolve(point.sizes(t2v)) == (2,)
    assert spec.sample_inputs()[TIMESTEP].shape == (2, spec.sample_sizes["tokens"])


def test_served_ti2v_text_to_video_is_diffusers(ti2v_server, ti2v_checkpoint):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(ti2v_checkpoint)
    pipe.set_progress_bar_config(disable=True)
    expected = run_diffusers(pipe, REQUEST)
    served = grpc_client.generate(ti2v_server.grpc_url, REQUEST, TI2V)
    assert served["video"].shape == (9, 32, 64, 3)
    assert psnr(served["video"], expected) >= PARITY_DB
    wrong = grpc_client.generate(ti2v_server.grpc_url, {**REQUEST, "guidance_scale": 5.0}, TI2V)["video"]
    assert psnr(wrong, expected) < PARITY_DB  # the threshold tells a different request apart
    [expert] = expert_models(read_checkpoint(ti2v_checkpoint))
    with grpcclient.InferenceServerClient(ti2v_server.grpc_url) as client:
        result = client.infer(TI2V, grpc_client.infer_inputs(REQUEST),
                              outputs=[grpcclient.InferRequestedOutput(STEP_EXPERTS)])
        index = client.get_model_repository_index(headers=ti2v_server.admin_headers("grpc"))
    served_models = {m.name for m in index.models}
    assert [e.decode() for e in result.as_numpy(STEP_EXPERTS)] == [expert] * REQUEST["num_inference_steps"]
    assert grpc_client.fps_of(ti2v_server.grpc_url, TI2V) == 24  # the family's, in the served manifest
    # Named by what they do: no T2V orchestrator, no "high noise" expert
    assert served_models == {"wan22_ti2v", "wan22_ti2v_stream", "text_encoder", "transformer", "vae_decoder"}
    steps = []
    streamed = grpc_client.generate_stream(ti2v_server.grpc_url, REQUEST, steps.append, stream_model(TI2V))
    assert [p["expert"] for p in steps] == [expert] * REQUEST["num_inference_steps"]
    assert (streamed["video"] == served["video"]).all()


@pytest.mark.parametrize("options, message", [
    (ExportOptions(engine=Engine.ONNX), "do not cover the Wan2.2 VAE of TI2V-5B yet; export it with --engine torch"),
    (ExportOptions(parallel=ParallelPlan(ulysses=2)), "does not split per-token timesteps"),
    (ExportOptions(lora=(LoraSource("style", ("style.safetensors",)),)), "LoRA adapters for TI2V-5B are not served"),
])
def test_export_refuses_what_ti2v_is_not_served_with_yet(ti2v_checkpoint, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        export_repository(ti2v_checkpoint, tmp_path / "repo", options, log=lambda _: None)
    assert not (tmp_path / "repo").exists()  # refused before anything is written


def test_the_gpu_preset_is_the_ti2v_5b_release(tmp_path):
    """perf.gpu_checkpoint's configs-only TI2V-5B (the GPU benchmarks' random-weight architecture): read as the
    family, and its transformer counts the release's ~5B parameters."""
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from perf.gpu_checkpoint import write_configs_checkpoint

    checkpoint = write_configs_checkpoint(tmp_path / "ti2v-5b", "ti2v-5b")
    info = read_checkpoint(checkpoint)
    assert info.family == Family.TI2V_5B and info.expert_folders == ("transformer",)
    assert (info.z_dim, info.in_channels, info.spatial_multiple, info.num_attention_heads) == (48, 48, 32, 24)
    assert info.request_defaults["flow_shift"] == 5.0
    with torch.device("meta"):
        transformer = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(checkpoint / "transformer"))
        vae = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(checkpoint / "vae"))
    assert 4.9e9 < sum(p.numel() for p in transformer.parameters()) < 5.1e9
    assert len(vae.config.latents_mean) == len(vae.config.latents_std) == 48
