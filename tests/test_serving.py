"""The served `wan22_t2v` against diffusers' WanPipeline, on a real tritonserver (torch and onnx engines)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients import grpc_client
from wan22_triton.checkpoint import read_checkpoint
from wan22_triton.operations import events
from wan22_triton.request.video import read_mp4

from .conftest import ROOT, psnr, run_diffusers

# Guidance scales other than the checkpoint's defaults (4.0 / 3.0), so that a server ignoring either input, or
# swapping them, is seen.
BASE = {"prompt": "a red panda on a mossy branch", "negative_prompt": "blurry", "guidance_scale": 5.0,
        "guidance_scale_2": 2.0}
# Two frame counts x two resolutions; the step count crosses the expert boundary.
PARITY_CASES = [
    dict(num_frames=9, height=32, width=48, num_inference_steps=6, seed=11),
    dict(num_frames=17, height=48, width=32, num_inference_steps=6, seed=12),
    dict(num_frames=5, height=48, width=32, num_inference_steps=4, seed=13),
    dict(num_frames=13, height=32, width=48, num_inference_steps=4, seed=14),
]
# Served and diffusers videos match at ~90 dB and more (at most an LSB off in a few pixels); each mistake below
# scores under 55 dB (the high-noise steps at guidance_scale_2: 53 dB).
PARITY_DB = 60.0


def _assert_parity(served: np.ndarray, expected: np.ndarray, wrong: np.ndarray) -> None:
    """`served` is the reference's video; `wrong`, served for a deliberately different request, is not (the
    threshold tells the two apart)."""
    assert served.shape == expected.shape == wrong.shape
    assert psnr(served, expected) >= PARITY_DB
    assert psnr(wrong, expected) < PARITY_DB


@pytest.mark.parametrize("case", PARITY_CASES, ids=lambda c: f"{c['num_frames']}f-{c['height']}x{c['width']}")
def test_torch_engine_matches_diffusers(torch_server, diffusers_pipe, case):
    request = {**BASE, **case}
    served = grpc_client.generate(torch_server.grpc_url, request)["video"]
    expected = run_diffusers(diffusers_pipe, request)
    assert served.shape == (case["num_frames"], case["height"], case["width"], 3)
    swapped = {**request, "guidance_scale": BASE["guidance_scale_2"], "guidance_scale_2": BASE["guidance_scale"]}
    _assert_parity(served, expected, grpc_client.generate(torch_server.grpc_url, swapped)["video"])


@pytest.mark.parametrize("case", PARITY_CASES[:2], ids=lambda c: f"{c['num_frames']}f-{c['height']}x{c['width']}")
def test_onnx_engine_matches_diffusers(onnx_server, diffusers_pipe, case):
    request = {**BASE, **case}
    served = grpc_client.generate(onnx_server.grpc_url, request)["video"]
    expected = run_diffusers(diffusers_pipe, request)
    one_guidance = {**request, "guidance_scale_2": BASE["guidance_scale"]}  # the low-noise steps at the high's
    _assert_parity(served, expected, grpc_client.generate(onnx_server.grpc_url, one_guidance)["video"])


def test_cfg_off_runs_one_batch_item_and_matches_diffusers(torch_server, diffusers_pipe):
    """guidance_scale <= 1 turns CFG off as in diffusers: every expert call has one batch item (the server's own
    events), and the video is diffusers'."""
    request = dict(prompt="a lighthouse at night", num_frames=5, height=32, width=32, num_inference_steps=3,
                   guidance_scale=1.0, guidance_scale_2=1.0, seed=5)
    offset = events.end_offset(torch_server.events_file)
    served = grpc_client.generate(torch_server.grpc_url, request)["video"]
    forwards = [e for e in events.read_events(torch_server.events_file, offset) if e["event"] == "expert_forward"]
    assert [e["batch"] for e in forwards] == [1] * request["num_inference_steps"]
    guided = {**request, "guidance_scale": 1.5}  # CFG on in the high-noise steps
    _assert_parity(served, run_diffusers(diffusers_pipe, request),
                   grpc_client.generate(torch_server.grpc_url, guided)["video"])


def test_the_default_negative_prompt_is_diffusers_default(torch_server, diffusers_pipe):
    """Without `negative_prompt`, CFG steers away from what diffusers' default does (the empty prompt)."""
    request = {**BASE, **PARITY_CASES[2]}
    del request["negative_prompt"]
    served = grpc_client.generate(torch_server.grpc_url, request)["video"]
    with_one = grpc_client.generate(torch_server.grpc_url, {**request, "negative_prompt": "blurry"})["video"]
    _assert_parity(served, run_diffusers(diffusers_pipe, request), with_one)


def test_same_seed_same_video_and_seed_is_reported(torch_server):
    request = dict(prompt="waves", num_frames=5, height=32, width=32, num_inference_steps=2)
    a = grpc_client.generate(torch_server.grpc_url, {**request, "seed": 7})
    b = grpc_client.generate(torch_server.grpc_url, {**request, "seed": 7})
    c = grpc_client.generate(torch_server.grpc_url, {**request, "seed": 8})
    assert a["seed"] == 7 and np.array_equal(a["video"], b["video"])
    assert not np.array_equal(a["video"], c["video"])
    unseeded = grpc_client.generate(torch_server.grpc_url, request)
    again = grpc_client.generate(torch_server.grpc_url, {**request, "seed": unseeded["seed"]})
    assert np.array_equal(unseeded["video"], again["video"])


def test_shared_memory_output_equals_the_grpc_message(torch_server):
    request = dict(prompt="waves", num_frames=9, height=32, width=48, num_inference_steps=2, seed=5)
    key, admin = torch_server.admin_key, torch_server.admin_headers("grpc")  # shared memory is an admin API
    plain = grpc_client.generate(torch_server.grpc_url, request)
    shared = grpc_client.generate(torch_server.grpc_url, request, shared_memory=True, admin_key=key)
    assert shared["video"].shape == (9, 32, 48, 3) and shared["seed"] == 5
    assert np.array_equal(shared["video"], plain["video"])
    with grpcclient.InferenceServerClient(torch_server.grpc_url) as client:
        assert client.get_system_shared_memory_status(as_json=True, headers=admin).get("regions", {}) == {}
    # One region for several requests: each answer lands in it whole (a smaller video, then a larger one).
    small = dict(request, num_frames=5, seed=6)
    with grpc_client.VideoSharedMemory(torch_server.grpc_url, shared["video"].nbytes, key) as region:
        first = grpc_client.generate(torch_server.grpc_url, small, shared_memory=region)
        second = grpc_client.generate(torch_server.grpc_url, request, shared_memory=region)
        with pytest.raises(ValueError, match="shared-memory region has"):
            grpc_client.generate(torch_server.grpc_url, dict(request, num_frames=13), shared_memory=region)
    assert np.array_equal(first["video"], grpc_client.generate(torch_server.grpc_url, small)["video"])
    assert np.array_equal(second["video"], plain["video"])
    with grpcclient.InferenceServerClient(torch_server.grpc_url) as client:
        assert client.get_system_shared_memory_status(as_json=True, headers=admin).get("regions", {}) == {}


@pytest.mark.parametrize("server", ["torch_server", "onnx_server"])
@pytest.mark.server
def test_vae_decoder_frames_are_its_video_as_uint8(server, request):
    """`frames` is `video` as diffusers' video processor makes it (output_type "np"), rounded to uint8."""
    import torch
    from diffusers.video_processor import VideoProcessor

    url = request.getfixturevalue(server).grpc_url
    latents = np.random.default_rng(0).standard_normal((1, 16, 3, 4, 6)).astype(np.float32)
    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("latents", list(latents.shape), "FP32")
        tensor.set_data_from_numpy(latents)
        both = client.infer("vae_decoder", [tensor], outputs=[grpcclient.InferRequestedOutput(n) for n in ("video", "frames")])
        only = client.infer("vae_decoder", [tensor], outputs=[grpcclient.InferRequestedOutput("frames")])
    video, frames = both.as_numpy("video"), both.as_numpy("frames")
    assert video.shape == (1, 3, 9, 32, 48) and frames.shape == (1, 9, 32, 48, 3) and frames.dtype == np.uint8
    as_diffusers = VideoProcessor().postprocess_video(torch.from_numpy(video.copy()), output_type="np")
    assert np.array_equal(frames, np.round(as_diffusers * 255).astype(np.uint8))
    assert only.as_numpy("video") is None and np.array_equal(only.as_numpy("frames"), frames)


def _diffusers_routing(pipe, steps: int, flow_shift: float) -> list[tuple[str, float]]:
    """(expert, timestep) of every transformer call diffusers makes, CFG off so one call per step."""
    import torch
    from diffusers import UniPCMultistepScheduler

    calls = []
    hooks = [
        module.register_forward_pre_hook(
            lambda _m, _a, kw, name=name: calls.append((name, float(kw["timestep"][0]))), with_kwargs=True
        )
        for name, module in (("transformer_high_noise", pipe.transformer), ("transformer_low_noise", pipe.transformer_2))
    ]
    original = pipe.scheduler
    pipe.scheduler = UniPCMultistepScheduler.from_config(original.config, flow_shift=flow_shift)
    try:
        pipe(prompt="x", num_frames=1, height=16, width=16, num_inference_steps=steps, guidance_scale=1.0,
             generator=torch.Generator("cpu").manual_seed(0), output_type="latent")
    finally:
        pipe.scheduler = original
        for h in hooks:
            h.remove()
    return calls


@pytest.mark.parametrize("flow_shift", [3.0, 12.0])
@pytest.mark.parametrize("steps", [4, 40])
def test_expert_routing_matches_diffusers(torch_server, diffusers_pipe, steps, flow_shift):
    request = dict(prompt="x", num_frames=1, height=16, width=16, num_inference_steps=steps, guidance_scale=1.0,
                   flow_shift=flow_shift, seed=0)
    with grpcclient.InferenceServerClient(torch_server.grpc_url) as client:
        outputs = [grpcclient.InferRequestedOutput(n) for n in ("step_experts", "step_timesteps")]
        result = client.infer("wan22_t2v", grpc_client.infer_inputs(request), outputs=outputs)
    served = [(e.decode(), float(t)) for e, t in zip(result.as_numpy("step_experts"), result.as_numpy("step_timesteps"))]
    expected = _diffusers_routing(diffusers_pipe, steps, flow_shift)
    assert served == expected
    experts = {e for e, _ in served}
    assert experts == {"transformer_high_noise", "transformer_low_noise"}  # both stages reached


@pytest.mark.parametrize("client", ["grpc_client", "http_client"])
def test_clients_write_mp4(torch_server, tiny_checkpoint, tmp_path, client):
    url = torch_server.grpc_url if client == "grpc_client" else torch_server.http_url
    out = tmp_path / f"{client}.mp4"
    cmd = [sys.executable, "-m", f"clients.{client}", "--url", url, "--prompt", "a kite", "--output", str(out),
           "--num-frames", "9", "--height", "32", "--width", "48", "--num-inference-steps", "2", "--seed", "3"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "latency" in proc.stdout
    frames, fps = read_mp4(out)
    assert frames.shape == (9, 32, 48, 3)
    assert fps == read_checkpoint(tiny_checkpoint).generation.fps  # read from the model config


@pytest.mark.parametrize("client", ["grpc_client", "http_client"])
def test_clients_refuse_an_output_they_cannot_write_before_any_request(tmp_path, client):
    out = tmp_path / "video.gif"
    cmd = [sys.executable, "-m", f"clients.{client}", "--url", "127.0.0.1:1", "--prompt", "a kite", "--output", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and not out.exists()
    [line] = proc.stderr.strip().splitlines()  # refused before connecting: the URL would have failed otherwise
    assert line.startswith("error: --output") and ".mp4" in line, line


def _infer_raw(url: str, tensors: list[tuple[str, str, np.ndarray]]):
    with grpcclient.InferenceServerClient(url) as client:
        inputs = []
        for name, dtype, array in tensors:
            tensor = grpcclient.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return client.infer("wan22_t2v", inputs, outputs=[grpcclient.InferRequestedOutput("video")])


GOOD = dict(prompt="ok", num_frames=5, height=32, width=32, num_inference_steps=1, seed=1)
BAD_VALUES = [
    ({"num_frames": 10}, "num_frames"),  # not 4k+1
    ({"num_frames": 37}, "num_frames"),  # above the configured maximum (33)
    ({"height": 40}, "height"),  # not a multiple of 16
    ({"width": 512}, "width"),  # above the configured maximum (256)
    ({"width": 0}, "width"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"num_inference_steps": 51}, "num_inference_steps"),  # above the configured maximum (50)
    ({"guidance_scale": float("nan")}, "guidance_scale"),
    ({"flow_shift": -1.0}, "flow_shift"),
    ({"seed": -5}, "seed"),
]


@pytest.mark.parametrize("bad,field", BAD_VALUES, ids=[f for _, f in BAD_VALUES])
def test_bad_values_are_invalid_arg_and_server_keeps_serving(torch_server, bad, field):
    with pytest.raises(InferenceServerException) as err:
        grpc_client.generate(torch_server.grpc_url, {**GOOD, **bad})
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert field in err.value.message()
    assert grpc_client.generate(torch_server.grpc_url, GOOD)["video"].shape == (5, 32, 32, 3)


BAD_TENSORS = {
    "non-utf8 prompt": ([("prompt", "BYTES", np.array([b"\xff\xfe bad"], dtype=object))], "prompt"),
    "missing prompt": ([("num_frames", "INT32", np.array([5], dtype=np.int32))], "prompt"),
    "wrong dtype": ([("prompt", "BYTES", np.array([b"ok"], dtype=object)), ("num_frames", "FP32", np.array([5.0], dtype=np.float32))], "num_frames"),
    "wrong shape": ([("prompt", "BYTES", np.array([b"ok"], dtype=object)), ("seed", "INT64", np.array([1, 2], dtype=np.int64))], "seed"),
}


@pytest.mark.parametrize("case", list(BAD_TENSORS), ids=list(BAD_TENSORS))
def test_bad_tensors_are_invalid_arg_and_server_keeps_serving(torch_server, case):
    tensors, field = BAD_TENSORS[case]
    with pytest.raises(InferenceServerException) as err:
        _infer_raw(torch_server.grpc_url, tensors)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert field in err.value.message()
    assert grpc_client.generate(torch_server.grpc_url, GOOD)["video"].shape == (5, 32, 32, 3)
