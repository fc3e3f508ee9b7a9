"""Size limits, on a real tritonserver: the orchestrator's prompt limit, and each component model's own limits
(they can be called directly, bypassing the orchestrator)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from clients import grpc_client
from export.model_config import read_manifest
from wan22_triton.operations.limits import latent_bounds

SMALL = {"prompt": "x", "num_frames": 5, "height": 32, "width": 48, "num_inference_steps": 2, "seed": 0}


def _limits(server, model: str = "wan22_t2v"):
    manifest = read_manifest(f"{server.model_repository}/{model}")
    return manifest.limits, manifest.checkpoint


def _infer(url: str, model: str, arrays: dict[str, np.ndarray], output: str, client=grpcclient):
    with client.InferenceServerClient(url) as c:
        inputs = []
        for name, array in arrays.items():
            tensor = client.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return c.infer(model, inputs, outputs=[client.InferRequestedOutput(output)]).as_numpy(output)


def _assert_invalid(err: pytest.ExceptionInfo, *words: str) -> None:
    status = err.value.status()
    assert status in ("StatusCode.INVALID_ARGUMENT", "400"), status
    assert all(w in err.value.message() for w in words), err.value.message()


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_a_prompt_over_the_limit_is_invalid_arg_over_both_protocols(torch_server, field):
    limits, _ = _limits(torch_server)
    huge = "a" * (limits.max_prompt_bytes + 1)
    with pytest.raises(InferenceServerException) as err:
        grpc_client.generate(torch_server.grpc_url, {**SMALL, field: huge})
    _assert_invalid(err, field, str(limits.max_prompt_bytes))
    arrays = {"prompt": np.array(["x".encode()], dtype=object), field: np.array([huge.encode()], dtype=object)}
    with pytest.raises(InferenceServerException) as err:
        _infer(torch_server.http_url, "wan22_t2v", arrays, "seed_used", client=httpclient)
    _assert_invalid(err, field, str(limits.max_prompt_bytes))
    # At the limit it is served, and so is the next request.
    at_limit = "a" * limits.max_prompt_bytes
    assert grpc_client.generate(torch_server.grpc_url, {**SMALL, field: at_limit})["video"].shape == (5, 32, 48, 3)


def test_the_text_encoder_refuses_an_oversized_text_before_tokenizing(torch_server):
    limits, info = _limits(torch_server, "text_encoder")
    text = np.array([[b"a" * (10 * limits.max_prompt_bytes)]], dtype=object)
    with pytest.raises(InferenceServerException) as err:
        _infer(torch_server.grpc_url, "text_encoder", {"text": text}, "prompt_embeds")
    _assert_invalid(err, "'text'", str(limits.max_prompt_bytes))
    ok = _infer(torch_server.grpc_url, "text_encoder", {"text": np.array([[b"x"]], dtype=object)}, "prompt_embeds")
    assert ok.shape == (1, info.text_len, info.text_dim)


def _expert_inputs(info, frames: int, height: int, width: int) -> dict[str, np.ndarray]:
    return {
        "hidden_states": np.zeros((1, info.in_channels, frames, height, width), np.float32),
        "timestep": np.full((1, 1), 500.0, np.float32),
        "encoder_hidden_states": np.zeros((1, info.text_len, info.text_dim), np.float32),
    }


@pytest.mark.parametrize("latent, words", [
    ((2, 3, 3), ("height", "multiple of 2")),  # the patch does not divide it: it used to come back cropped
    ((2, 4, 1000), ("width", "within [1,")),
    ((1000, 4, 4), ("frames", "within [1,")),
])
def test_an_expert_refuses_latents_its_patch_or_the_limits_do_not_allow(torch_server, latent, words):
    _, info = _limits(torch_server, "transformer_high_noise")
    with pytest.raises(InferenceServerException) as err:
        _infer(torch_server.grpc_url, "transformer_high_noise", _expert_inputs(info, *latent), "noise_pred")
    _assert_invalid(err, "hidden_states", *words)
    noise = _infer(torch_server.grpc_url, "transformer_high_noise", _expert_inputs(info, 2, 4, 4), "noise_pred")
    assert noise.shape == (1, info.out_channels, 2, 4, 4)


def test_the_vae_decoder_refuses_latents_beyond_the_limits(torch_server):
    limits, info = _limits(torch_server, "vae_decoder")
    frames, height, width = latent_bounds(info, limits)
    too_wide = np.zeros((1, info.z_dim, 1, 2, width + 1), np.float32)
    with pytest.raises(InferenceServerException) as err:
        _infer(torch_server.grpc_url, "vae_decoder", {"latents": too_wide}, "frames")
    _assert_invalid(err, "latents", "width", f"[1, {width}]")
    frames_ok = _infer(torch_server.grpc_url, "vae_decoder", {"latents": np.zeros((1, info.z_dim, 1, 2, 2), np.float32)},
                       "frames")
    assert frames_ok.shape == (1, 1, 2 * info.vae_scale_factor_spatial, 2 * info.vae_scale_factor_spatial, 3)
