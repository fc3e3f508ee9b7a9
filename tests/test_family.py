"""The Wan2.2 family beyond T2V-A14B, from the diffusers layouts of the tiny stand-ins, told from their configs,
exported and served by a real tritonserver against diffusers. TI2V-5B (`expand_timesteps`: a timestep per latent
token): text to video against WanPipeline, image to video against WanImageToVideoPipeline; bad images refused while
the server keeps serving. I2V-A14B (two experts, the first frame as extra channels) against WanImageToVideoPipeline,
routing included; a request without its image refused. The modes they are not served with yet refused at export.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from clients import grpc_client
from export.loras import LoraSource
from export.options import ExportOptions
from export.repository import export_repository
from wan22_triton.checkpoint import Family, read_checkpoint
from wan22_triton.components.common import CompilePoint
from wan22_triton.components.expert import TIMESTEP, expert_models, transformer_spec
from wan22_triton.components.orchestrator import ORCHESTRATOR_MODELS, STEP_EXPERTS, VIDEO, stream_model
from wan22_triton.components.vae_encoder import PIXELS, VAE_ENCODER
from wan22_triton.errors import RequestError
from wan22_triton.request.image import decode_image
from wan22_triton.options import Engine

from .conftest import TEST_LIMITS, psnr, run_diffusers

# Not the family's defaults (50 steps, guidance 5.0, 121x704x1280): a size the tiny model decodes in a second,
# and a guidance scale a server ignoring it would miss.
REQUEST = dict(prompt="a red panda in the snow", negative_prompt="blurry", num_frames=9, height=32, width=64,
               num_inference_steps=4, guidance_scale=6.0, seed=7)
PARITY_DB = 60.0
MOTION = "motion"  # the LoRA every family's server is exported with
TI2V = ORCHESTRATOR_MODELS[Family.TI2V_5B]
# Small image bounds, so that the refusals are cheap to provoke
LIMITS = replace(TEST_LIMITS, max_image_bytes=200_000, max_image_pixels=256 * 256)


def picture(width: int = 80, height: int = 48, kind: str = "PNG", inverted: bool = False) -> bytes:
    """A deterministic RGB picture, another size than the video (the server resizes it as diffusers does)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1).astype(np.uint8)
    rgb = 255 - rgb if inverted else rgb
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, kind)
    return out.getvalue()


def tiny(tmp_path_factory, family: Family) -> Path:
    from devtools.tiny_checkpoint import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp(family) / f"tiny-{family}", family)


def family_loras(checkpoint: Path, out: Path) -> tuple[LoraSource, ...]:
    """One LoRA, `MOTION`, with a file per expert of the checkpoint (the community layout)."""
    from devtools.tiny_lora import RANK, block_linears, lora_pairs, write_community_layout

    files = tuple(str(write_community_layout(out / f"{folder}.safetensors",
                                             lora_pairs(block_linears(checkpoint, folder), seed=30 + index), RANK))
                  for index, folder in enumerate(read_checkpoint(checkpoint).expert_folders))
    return (LoraSource(MOTION, files),)


def serve(served, checkpoint: Path, tmp_path_factory):
    """The checkpoint's default torch export (with LIMITS) and its LoRA (family_loras), on a real tritonserver."""
    options = ExportOptions(limits=LIMITS, lora=family_loras(checkpoint, tmp_path_factory.mktemp("loras")))
    return served(repository=lambda folder: export_repository(checkpoint, folder, options, log=lambda _: None))


def with_lora(pipe, sources: tuple[LoraSource, ...], scale: float):
    """diffusers' pipeline with the LoRA loaded by `load_lora_weights` into each expert, at `scale`."""
    [source] = sources
    pipe.load_lora_weights(source.files[0], adapter_name=source.name)
    if len(source.files) > 1:
        pipe.load_lora_weights(source.files[1], adapter_name=source.name, load_into_transformer_2=True)
    for transformer in filter(None, (pipe.transformer, pipe.transformer_2)):
        transformer.set_adapters(source.name, scale)
    return pipe


@pytest.fixture(scope="module")
def ti2v_checkpoint(tmp_path_factory) -> Path:
    return tiny(tmp_path_factory, Family.TI2V_5B)


@pytest.fixture(scope="module")
def ti2v_server(served, ti2v_checkpoint, tmp_path_factory):
    return serve(served, ti2v_checkpoint, tmp_path_factory)


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
    assert served_models == {"wan22_ti2v", "wan22_ti2v_stream", "text_encoder", "transformer", "vae_encoder",
                             "vae_decoder"}
    steps = []
    streamed = grpc_client.generate_stream(ti2v_server.grpc_url, REQUEST, steps.append, stream_model(TI2V))
    assert [p["expert"] for p in steps] == [expert] * REQUEST["num_inference_steps"]
    assert (streamed["video"] == served["video"]).all()


def test_served_ti2v_image_to_video_is_diffusers(ti2v_server, ti2v_checkpoint):
    """With an image: WanImageToVideoPipeline's expand_timesteps path (the image's latents as the first frame, its
    tokens at timestep 0), on the unary and the streaming model."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    base = WanPipeline.from_pretrained(ti2v_checkpoint)
    pipe = WanImageToVideoPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
                                   scheduler=base.scheduler, transformer=base.transformer, expand_timesteps=True)
    pipe.set_progress_bar_config(disable=True)
    image = picture()
    expected = run_diffusers(pipe, {**REQUEST, "image": Image.open(io.BytesIO(image)).convert("RGB")})
    served = grpc_client.generate(ti2v_server.grpc_url, {**REQUEST, "image": image}, TI2V)
    assert served["video"].shape == (9, 32, 64, 3)
    assert psnr(served["video"], expected) >= PARITY_DB
    assert VAE_ENCODER in served["stage_seconds"]
    text_only = grpc_client.generate(ti2v_server.grpc_url, REQUEST, TI2V)["video"]
    assert psnr(text_only, expected) < PARITY_DB  # the image made the difference
    other = grpc_client.generate(ti2v_server.grpc_url, {**REQUEST, "image": picture(inverted=True)}, TI2V)["video"]
    assert psnr(other, expected) < PARITY_DB  # and which image it was
    pixels = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
    as_rgb = grpc_client.generate(ti2v_server.grpc_url, {**REQUEST, "image_rgb": pixels}, TI2V)["video"]
    assert (as_rgb == served["video"]).all()  # the same picture as UINT8 [height, width, 3]
    jpeg = grpc_client.generate(ti2v_server.grpc_url, {**REQUEST, "image": picture(kind="JPEG")}, TI2V)["video"]
    assert psnr(jpeg, expected) > 40  # the same picture, with JPEG's losses
    steps = []
    streamed = grpc_client.generate_stream(ti2v_server.grpc_url, {**REQUEST, "image": image}, steps.append,
                                           stream_model(TI2V))
    assert len(steps) == REQUEST["num_inference_steps"] and (streamed["video"] == served["video"]).all()


def test_served_ti2v_lora_is_diffusers_load_lora_weights(ti2v_server, ti2v_checkpoint, tmp_path):
    """A LoRA on the one transformer: the served video with it is WanPipeline's after load_lora_weights; a pair of
    files (one per expert) is refused for a checkpoint with one."""
    from diffusers import WanPipeline

    sources = family_loras(ti2v_checkpoint, tmp_path)
    pipe = with_lora(WanPipeline.from_pretrained(ti2v_checkpoint), sources, 0.8)
    pipe.set_progress_bar_config(disable=True)
    expected = run_diffusers(pipe, REQUEST)
    served = grpc_client.generate(ti2v_server.grpc_url, {**REQUEST, "lora": MOTION, "lora_scale": 0.8}, TI2V)
    assert psnr(served["video"], expected) >= PARITY_DB
    base = grpc_client.generate(ti2v_server.grpc_url, REQUEST, TI2V)["video"]
    assert psnr(base, expected) < PARITY_DB  # the adapter made the difference
    pair = LoraSource("pair", sources[0].files * 2)
    with pytest.raises(ValueError, match="2 files for a checkpoint with 1 expert"):
        export_repository(ti2v_checkpoint, tmp_path / "repo", ExportOptions(lora=(pair,)), log=lambda _: None)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the openai SDK's notice on its video API
def test_video_api_sends_input_reference_as_the_image(ti2v_server, tmp_path):
    """OpenAI's `input_reference` upload reaches wan22_ti2v as its image: the job's MP4 is the gRPC request's with
    that image; a file that is no image is a 400 naming `input_reference`."""
    import openai

    from .test_video_api import ApiProcess

    api = ApiProcess(ti2v_server.grpc_url, f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path / "results", "wv-ti2v",
                     tmp_path / "events.jsonl")
    try:
        client = api.client("wv-ti2v")
        wan = {k: v for k, v in REQUEST.items() if k not in ("prompt", "num_frames", "height", "width")}
        video = client.videos.create_and_poll(prompt=REQUEST["prompt"], model=TI2V, size="64x32", seconds="0.3334",
                                              input_reference=("frame.png", picture(), "image/png"), extra_body=wan)
        assert video.status == "completed", video.error
        direct = grpc_client.generate(ti2v_server.grpc_url, {**REQUEST, "image": picture(), "output_format": "mp4"},
                                      TI2V)
        assert client.videos.download_content(video.id).read() == direct["video_mp4"]
        with pytest.raises(openai.BadRequestError) as refused:
            client.videos.create(prompt="x", model=TI2V, size="64x32", seconds="0.3334",
                                 input_reference=("a.png", b"GIF89a", "image/png"))
        assert refused.value.body["param"] == "input_reference"
    finally:
        api.stop()


def _bomb() -> bytes:
    """A PNG that decodes to 4096x4096 pixels from a few kB."""
    out = io.BytesIO()
    Image.new("RGB", (4096, 4096)).save(out, "PNG")
    return out.getvalue()


BAD_IMAGES = {
    "not-an-image": ({"image": b"GIF89a not really"}, "must be a PNG, JPEG or WEBP image"),
    "unsupported-format": ({"image": picture(kind="GIF")}, "must be a PNG, JPEG or WEBP image"),
    "too-many-pixels": ({"image": _bomb()}, "is 4096x4096 pixels; the limit is 65536 pixels"),
    "too-many-bytes": ({"image": np.random.default_rng(0).bytes(300_000)}, "is 300000 bytes; the limit is 200000 bytes"),
    "truncated": ({"image": picture(200, 120)[:400]}, "could not be decoded"),
    "rgb-too-many-pixels": ({"image_rgb": np.zeros((300, 300, 3), np.uint8)}, "is 300x300 pixels; the limit is 65536"),
    "rgb-empty": ({"image_rgb": np.zeros((0, 8, 3), np.uint8)}, "must be [height, width, 3], got shape [0, 8, 3]"),
    "rgb-four-channels": ({"image_rgb": np.zeros((8, 8, 4), np.uint8)}, "unexpected shape for input 'image_rgb'"),
    "both": ({"image": picture(), "image_rgb": np.zeros((8, 8, 3), np.uint8)}, "either 'image' or 'image_rgb', not both"),
}


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_bad_images_are_invalid_arg_and_the_server_keeps_serving(ti2v_server, name):
    inputs, message = BAD_IMAGES[name]
    with pytest.raises(InferenceServerException) as err:
        grpc_client.generate(ti2v_server.grpc_url, {**REQUEST, "num_inference_steps": 1, **inputs}, TI2V)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and message in err.value.message(), err.value.message()
    good = grpc_client.generate(ti2v_server.grpc_url, {**REQUEST, "num_inference_steps": 1, "image": picture()}, TI2V)
    assert good["video"].shape == (9, 32, 64, 3)


def test_an_image_to_a_text_only_model_is_invalid_arg(torch_server):
    request = dict(prompt="a cat", num_frames=5, height=32, width=32, num_inference_steps=1, seed=1)
    with pytest.raises(InferenceServerException) as err:
        grpc_client.generate(torch_server.grpc_url, {**request, "image": picture()})
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'image' is not taken by wan22_t2v" in err.value.message()
    with pytest.raises(InferenceServerException, match="'image_rgb' is not taken by wan22_t2v"):
        grpc_client.generate(torch_server.grpc_url, {**request, "image_rgb": np.zeros((8, 8, 3), np.uint8)})
    assert grpc_client.generate(torch_server.grpc_url, request)["video"].shape == (5, 32, 32, 3)


def test_the_pixel_bound_is_read_from_the_header_before_any_decoding(monkeypatch):
    """The bomb is refused by its header: decoding is never reached."""
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(RequestError, match="4096x4096 pixels"):
        decode_image(BAD_IMAGES["too-many-pixels"][0]["image"], LIMITS)


@pytest.mark.parametrize("options, message", [
    (ExportOptions(engine=Engine.ONNX), "do not cover the Wan2.2 VAE of TI2V-5B yet; export it with --engine torch"),
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


# ---- I2V-A14B: two experts conditioned on a first frame through extra input channels ----

I2V = ORCHESTRATOR_MODELS[Family.I2V_A14B]
I2V_REQUEST = dict(prompt="a lighthouse at dusk", negative_prompt="blurry", num_frames=9, height=32, width=48,
                   num_inference_steps=6, guidance_scale=4.5, guidance_scale_2=2.5, seed=5)


@pytest.fixture(scope="module")
def i2v_checkpoint(tmp_path_factory) -> Path:
    return tiny(tmp_path_factory, Family.I2V_A14B)


@pytest.fixture(scope="module")
def i2v_server(served, i2v_checkpoint, tmp_path_factory):
    return serve(served, i2v_checkpoint, tmp_path_factory)


def test_i2v_is_told_from_its_configs(i2v_checkpoint):
    info = read_checkpoint(i2v_checkpoint)
    assert info.family == Family.I2V_A14B and info.takes_image and info.requires_image
    # the experts take the latents, the first-frame mask (one per VAE temporal step) and the condition's latents
    assert (info.in_channels, info.out_channels, info.z_dim) == (16 + 4 + 16, 16, 16)
    assert info.latent_shape(81, 480, 832) == (16, 21, 60, 104) and info.boundary_timestep == 900
    assert (info.generation.num_inference_steps, info.generation.guidance_scale, info.generation.fps) == (40, 3.5, 16)
    assert info.request_defaults["flow_shift"] == 5.0


def test_served_i2v_is_diffusers_image_to_video(i2v_server, i2v_checkpoint):
    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline.from_pretrained(i2v_checkpoint)
    pipe.set_progress_bar_config(disable=True)
    image = picture()
    expected = run_diffusers(pipe, {**I2V_REQUEST, "image": Image.open(io.BytesIO(image)).convert("RGB")})
    boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    diffusers_experts = [expert_models(read_checkpoint(i2v_checkpoint))[0 if t >= boundary else 1]
                         for t in pipe.scheduler.timesteps]  # the timesteps of the call above
    with grpcclient.InferenceServerClient(i2v_server.grpc_url) as client:
        result = client.infer(I2V, grpc_client.infer_inputs({**I2V_REQUEST, "image": image}))
        index = client.get_model_repository_index(headers=i2v_server.admin_headers("grpc"))
    served = result.as_numpy(VIDEO)
    assert served.shape == (9, 32, 48, 3) and psnr(served, expected) >= PARITY_DB
    assert [e.decode() for e in result.as_numpy(STEP_EXPERTS)] == diffusers_experts
    assert len(set(diffusers_experts)) == 2  # the request crosses the boundary
    other = grpc_client.generate(i2v_server.grpc_url, {**I2V_REQUEST, "image": picture(inverted=True)}, I2V)["video"]
    assert psnr(other, expected) < PARITY_DB  # the image counts
    assert {m.name for m in index.models} == {
        "wan22_i2v", "wan22_i2v_stream", "text_encoder", "transformer_high_noise", "transformer_low_noise",
        "vae_encoder", "vae_decoder"}


def test_perf_analyzer_sweeps_i2v_with_a_picture(i2v_server, i2v_checkpoint, tmp_path):
    """The sweep sends the required image (a gradient PNG as Triton's serialized BYTES) and measures the orchestrator
    with the VAE encoder among its composing models; the encoder's own data is at the video's frames."""
    from perf import perf_analyzer_sweep

    argv = ["--checkpoint", str(i2v_checkpoint), "--url", i2v_server.grpc_url, "--models", I2V,
            "--admin-key", i2v_server.admin_key, "--concurrency", "1", "--warmup", "1",
            "--measurement-request-count", "2", "--data-entries", "1", "--num-frames", "5", "--num-inference-steps", "2",
            "--results", str(tmp_path), "--label", "i2v", "--stability-percentage", "100000"]
    assert perf_analyzer_sweep.main(argv) == 0
    summary = json.loads((tmp_path / "i2v" / "summary.json").read_text())
    assert summary["request"]["image"] == "gradient" and summary["models"][I2V]["rows"]
    assert VAE_ENCODER in summary["models"][I2V]["command"]  # a composing model: its calls are in the report
    [request, *_] = json.loads((tmp_path / "i2v" / f"{I2V}.json").read_text())["data"]
    serialized = base64.b64decode(request["image"]["content"]["b64"])
    assert int.from_bytes(serialized[:4], "little") == len(serialized) - 4
    assert Image.open(io.BytesIO(serialized[4:])).size == (48, 32)
    args = perf_analyzer_sweep.parse_args(argv)
    [encoder] = perf_analyzer_sweep.component_data(VAE_ENCODER, read_checkpoint(i2v_checkpoint), args, [])
    assert encoder[PIXELS]["shape"] == [3, 5, 32, 48]  # the image and empty frames, as the channels way encodes


def test_served_i2v_lora_is_diffusers_load_lora_weights(i2v_server, i2v_checkpoint, tmp_path):
    """An I2V LoRA, a file per expert: the served video with it and an image is WanImageToVideoPipeline's after
    load_lora_weights into both experts."""
    from diffusers import WanImageToVideoPipeline

    pipe = with_lora(WanImageToVideoPipeline.from_pretrained(i2v_checkpoint), family_loras(i2v_checkpoint, tmp_path),
                     0.6)
    pipe.set_progress_bar_config(disable=True)
    image = picture()
    expected = run_diffusers(pipe, {**I2V_REQUEST, "image": Image.open(io.BytesIO(image)).convert("RGB")})
    request = {**I2V_REQUEST, "image": image}
    served = grpc_client.generate(i2v_server.grpc_url, {**request, "lora": MOTION, "lora_scale": 0.6}, I2V)["video"]
    assert psnr(served, expected) >= PARITY_DB
    assert psnr(grpc_client.generate(i2v_server.grpc_url, request, I2V)["video"], expected) < PARITY_DB


def test_i2v_without_an_image_is_invalid_arg_and_the_server_keeps_serving(i2v_server):
    small = {**I2V_REQUEST, "num_inference_steps": 1}
    with pytest.raises(InferenceServerException) as err:
        grpc_client.generate(i2v_server.grpc_url, small, I2V)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'image' is required by wan22_i2v" in err.value.message()
    assert grpc_client.generate(i2v_server.grpc_url, {**small, "image": picture()}, I2V)["video"].shape == (9, 32, 48, 3)


@pytest.mark.parametrize("options, message", [
    (ExportOptions(engine=Engine.ONNX), "the VAE encoder an image needs is served by the torch engine only"),
])
def test_export_refuses_what_i2v_is_not_served_with_yet(i2v_checkpoint, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        export_repository(i2v_checkpoint, tmp_path / "repo", options, log=lambda _: None)
    assert not (tmp_path / "repo").exists()


def test_the_gpu_preset_is_the_i2v_a14b_release(tmp_path):
    """perf.gpu_checkpoint's configs-only I2V-A14B: read as the family, each expert the A14B's ~14.3B parameters
    with a 36-channel patch embedding."""
    import torch
    from diffusers import WanTransformer3DModel

    from perf.gpu_checkpoint import write_configs_checkpoint

    checkpoint = write_configs_checkpoint(tmp_path / "i2v-a14b", "i2v-a14b")
    info = read_checkpoint(checkpoint)
    assert info.family == Family.I2V_A14B and info.expert_folders == ("transformer", "transformer_2")
    assert (info.in_channels, info.out_channels, info.z_dim, info.boundary_timestep) == (36, 16, 16, 900)
    assert info.request_defaults["flow_shift"] == 5.0
    with torch.device("meta"):
        expert = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(checkpoint / "transformer_2"))
    assert 14.2e9 < sum(p.numel() for p in expert.parameters()) < 14.4e9
    assert expert.patch_embedding.in_channels == 36
