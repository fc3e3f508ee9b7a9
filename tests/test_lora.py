"""LoRA adapters per request and few-step presets (wan22_triton.request.lora, wan22_triton.request.presets).

Without a server: `Wan22T2VPipeline` whose experts are the checkpoint's, loaded the way the served expert loads them
(the export's copy of the files, `ExpertAdapters`, one adapter selected per call), against diffusers' `WanPipeline`
with the same files loaded by `load_lora_weights` into both experts; the `lightning_4step` preset against WanPipeline
on the Lightning release's Euler grid. The adapters are devtools/tiny_lora.py's: one file in diffusers' layout with
adapter metadata (`style`), and a pair in the community layout (high noise) and diffusers' (low noise).

On a real tritonserver (one export with those LoRAs, one server for the module): the served video with a LoRA is
the pipeline's; four concurrent requests with different adapters and scales each get their solo result; bad inputs
are INVALID_ARG naming the input and the server keeps serving; a preset runs its steps without CFG.
"""

from __future__ import annotations

import json
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients import grpc_client
from export.loras import LoraSource, expert_lora_writer
from export.repository import ExportOptions, export_repository
from wan22_triton.checkpoint import read_checkpoint
from wan22_triton.components.expert import expert_models
from wan22_triton.errors import RequestError
from wan22_triton.request.lora import ExpertAdapters
from wan22_triton.manifest import Manifest, SpeedOptions
from wan22_triton.parallel.plan import ParallelPlan, split_cfg
from wan22_triton.request.pipeline import Wan22T2VPipeline, frames_to_uint8, uses_cfg
from wan22_triton.request.validation import validate_request
from wan22_triton.request.presets import PRESETS

from .conftest import TEST_LIMITS, psnr, run_diffusers
from .test_pipeline_diffusers import REQUEST, diffusers_pipeline, inputs

# diffusers' own load_lora_weights of a second adapter (the reference pipeline's): expected, several are the point
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")
PRESET = PRESETS[0]  # lightning_4step: its LoRA is exported below under its name, from the tiny pair
PARITY_DB = 60.0  # measured ~90 dB (cond and uncond batched here, two calls in diffusers); a scale 10% off: < 49 dB
SMALL = dict(prompt="a lighthouse at night", negative_prompt="blurry", num_frames=5, height=32, width=32,
             num_inference_steps=3, guidance_scale=4.0, guidance_scale_2=3.0, seed=21)


@pytest.fixture(scope="module")
def sources(tiny_checkpoint, tmp_path_factory) -> tuple[LoraSource, ...]:
    from devtools.tiny_lora import write_loras

    files = {k: str(v) for k, v in write_loras(tiny_checkpoint, tmp_path_factory.mktemp("loras")).items()}
    pair = (files["high_noise"], files["low_noise"])
    return (LoraSource("style", (files["style"],)), LoraSource("pair", pair), LoraSource(PRESET.lora, pair))


@pytest.fixture(scope="module")
def manifest(tiny_checkpoint, sources) -> Manifest:
    return Manifest(model="wan22_t2v", engine="torch", precision="fp32", checkpoint=read_checkpoint(tiny_checkpoint),
                    loras=tuple(s.name for s in sources), presets=PRESETS)


@pytest.fixture(scope="module")
def experts(tiny_checkpoint, sources, manifest, tmp_path_factory) -> dict[str, ExpertAdapters]:
    """Each expert as the served one loads it: the export's copy of its files, then `ExpertAdapters.load`."""
    from diffusers import WanTransformer3DModel

    out = {}
    info = manifest.checkpoint
    for index, (folder, name) in enumerate(zip(info.expert_folders, expert_models(info))):
        version = tmp_path_factory.mktemp(name)
        expert_lora_writer(sources, index)(version)
        model = WanTransformer3DModel.from_pretrained(tiny_checkpoint / folder).eval()
        out[name] = ExpertAdapters.load(model, version, manifest.loras, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def reference_pipe(tiny_checkpoint, sources):
    """diffusers' WanPipeline with every LoRA loaded by `load_lora_weights` into both experts (a file for both: the
    same file with and without `load_into_transformer_2`)."""
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_checkpoint)
    pipe.set_progress_bar_config(disable=True)
    for source in sources:
        pipe.load_lora_weights(source.files[0], adapter_name=source.name)
        pipe.load_lora_weights(source.files[-1], adapter_name=source.name, load_into_transformer_2=True)
    return pipe


def run_reference(pipe, request: dict, lora: tuple[str, float] | None, scheduler=None) -> np.ndarray:
    """diffusers' video with `lora` (name, scale) active in both experts (None: disabled), optionally another
    scheduler."""
    for transformer in (pipe.transformer, pipe.transformer_2):
        if lora is None:
            transformer.disable_lora()
        else:
            transformer.enable_lora()
            transformer.set_adapters(*lora)
    original = pipe.scheduler
    pipe.scheduler = scheduler or original
    try:
        return run_diffusers(pipe, request)
    finally:
        pipe.scheduler = original


def adapter_pipeline(pipe, manifest: Manifest, experts: dict[str, ExpertAdapters]) -> tuple[Wan22T2VPipeline, list]:
    """The pipeline on `experts` (adapter selected per call, as the served expert does), `pipe`'s text encoder and
    VAE; the list gets (expert, batch, lora) of every call."""
    calls: list = []

    def text_encoder(prompts: list[str]) -> torch.Tensor:
        return pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                  max_sequence_length=manifest.checkpoint.text_len, device=torch.device("cpu"))[0]

    def expert(name: str, latents, t, embeds, lora=None) -> torch.Tensor:
        calls.append((name, latents.shape[0], lora))
        experts[name].select(lora)
        return experts[name].model(hidden_states=latents, timestep=t, encoder_hidden_states=embeds,
                                   return_dict=False)[0]

    def vae_decoder(latents: torch.Tensor) -> torch.Tensor:
        return frames_to_uint8(pipe.vae.decode(latents, return_dict=False)[0])

    return Wan22T2VPipeline(manifest, text_encoder, expert, vae_decoder), calls


def generate(pipe, manifest, experts, request: dict):
    pipeline, calls = adapter_pipeline(pipe, manifest, experts)
    with torch.no_grad():
        return pipeline(validate_request(inputs(request), manifest)), calls


@pytest.mark.parametrize("lora", [("style", 0.7), ("pair", 0.6)], ids=["one-file-diffusers", "pair-community"])
@pytest.mark.slow
def test_pipeline_with_lora_matches_diffusers_load_lora_weights(reference_pipe, manifest, experts, lora):
    name, scale = lora
    result, calls = generate(reference_pipe, manifest, experts, {**REQUEST, "lora": name, "lora_scale": scale})
    expected = run_reference(reference_pipe, REQUEST, lora)
    assert {c[2] for c in calls} == {lora} and len(calls) == REQUEST["num_inference_steps"]
    assert psnr(result.video, expected) >= PARITY_DB
    # The threshold tells a scale 10% off apart (the reference at 0.9 x the scale).
    assert psnr(result.video, run_reference(reference_pipe, REQUEST, (name, 0.9 * scale))) < PARITY_DB


@pytest.mark.slow
def test_lora_changes_the_video_and_no_lora_is_the_base_model_bit_for_bit(reference_pipe, diffusers_pipe, manifest,
                                                                          experts):
    base, calls = generate(reference_pipe, manifest, experts, REQUEST)
    assert {c[2] for c in calls} == {None}
    plain, _ = diffusers_pipeline(diffusers_pipe, manifest)  # the checkpoint's experts, no adapters anywhere
    with torch.no_grad():
        expected = plain(validate_request(inputs(REQUEST), manifest)).video
    assert np.array_equal(base.video, expected)
    styled, _ = generate(reference_pipe, manifest, experts, {**REQUEST, "lora": "style"})
    half, _ = generate(reference_pipe, manifest, experts, {**REQUEST, "lora": "style", "lora_scale": 0.5})
    assert psnr(styled.video, base.video) < 30.0 and psnr(half.video, styled.video) < PARITY_DB


@pytest.mark.slow
def test_preset_runs_the_lightning_schedule_without_cfg(reference_pipe, manifest, experts):
    """The preset's 4 Euler steps on the release's grid, one expert call (batch 1) per step, its LoRA in both experts:
    diffusers' WanPipeline with FlowMatchEulerDiscreteScheduler given that grid, CFG off, gets the same video."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    class ReleaseEuler(FlowMatchEulerDiscreteScheduler):  # Wan2.2-Lightning's EulerScheduler grid, written out
        def set_timesteps(self, num_inference_steps=None, device=None, **_):
            super().set_timesteps(sigmas=np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1], device=device)

    request = dict(prompt=REQUEST["prompt"], num_frames=9, height=32, width=48, seed=5, preset=PRESET.name)
    result, calls = generate(reference_pipe, manifest, experts, request)
    shift, steps = PRESET.flow_shift, PRESET.num_inference_steps
    sigmas = np.linspace(1.0, 0.0, steps + 1)[:-1]
    assert result.timesteps == pytest.approx(list(shift * sigmas / (1 + (shift - 1) * sigmas) * 1000), abs=1e-3)
    high, low = expert_models(manifest.checkpoint)
    assert result.experts == [high, high, low, low]  # 1000, 937.5 >= 875 > 833.3, 625
    assert calls == [(e, 1, (PRESET.lora, 1.0)) for e in result.experts]  # CFG off: one batch item per step
    reference = dict(prompt=request["prompt"], num_frames=9, height=32, width=48, seed=5, num_inference_steps=steps,
                     guidance_scale=1.0, guidance_scale_2=1.0)
    scheduler = ReleaseEuler(num_train_timesteps=1000, shift=shift)
    assert psnr(result.video, run_reference(reference_pipe, reference, (PRESET.lora, 1.0), scheduler)) >= PARITY_DB
    assert psnr(result.video, run_reference(reference_pipe, reference, (PRESET.lora, 0.9), scheduler)) < PARITY_DB


def test_preset_defaults_yield_to_the_request(manifest):
    req = validate_request(inputs({"prompt": "x", "preset": PRESET.name}), manifest)
    assert (req.num_inference_steps, req.guidance_scale, req.guidance_scale_2, req.flow_shift) == (4, 1.0, 1.0, 5.0)
    assert (req.lora, req.lora_scale, req.sampler) == (PRESET.lora, 1.0, "euler") and not uses_cfg(req)
    req = validate_request(inputs({"prompt": "x", "preset": PRESET.name, "num_inference_steps": 6, "lora": "style",
                                   "lora_scale": 0.5, "guidance_scale": 2.0}), manifest)
    assert (req.num_inference_steps, req.lora, req.lora_scale, req.guidance_scale) == (6, "style", 0.5, 2.0)
    assert validate_request(inputs({"prompt": "x", "preset": PRESET.name, "lora": ""}), manifest).lora is None
    plain = validate_request(inputs({"prompt": "x"}), manifest)
    assert (plain.lora, plain.preset, plain.sampler, plain.num_inference_steps) == (None, None, "unipc", 40)


BAD_REQUESTS = [
    ({"lora": "nope"}, "'lora' 'nope' is not served"),
    ({"lora": "../../transformer/diffusion_pytorch_model"}, "'lora' must be 1-64 letters"),
    ({"lora": "style/../style"}, "'lora' must be 1-64 letters"),
    ({"lora": ".hidden"}, "'lora' must be 1-64 letters"),
    ({"lora": "style.v2"}, "'lora' must be 1-64 letters"),  # peft refuses '.' in adapter names
    ({"lora": "style", "lora_scale": float("nan")}, "'lora_scale' must be a finite number within"),
    ({"lora": "style", "lora_scale": float("inf")}, "'lora_scale' must be a finite number within"),
    ({"lora": "style", "lora_scale": 4.5}, "'lora_scale' must be a finite number within \\[-4, 4\\]"),
    ({"preset": "turbo"}, "'preset' must be one of \\['lightning_4step'\\], got 'turbo'"),
]


@pytest.mark.parametrize("bad, message", BAD_REQUESTS, ids=[m.split("'")[1] + str(i) for i, (_, m) in enumerate(BAD_REQUESTS)])
def test_bad_lora_inputs_are_request_errors(manifest, bad, message):
    with pytest.raises(RequestError, match=message):
        validate_request(inputs({"prompt": "x", **bad}), manifest)


def test_a_preset_whose_lora_was_not_exported_says_so(manifest):
    without = dataclasses.replace(manifest, loras=("style",))
    with pytest.raises(RequestError, match="'lora' 'lightning' \\(preset 'lightning_4step''s default; send lora"):
        validate_request(inputs({"prompt": "x", "preset": PRESET.name}), without)


def _with_metadata(path: Path, pairs: dict, config: dict) -> str:
    """diffusers' layout with the adapter metadata `config` (peft LoraConfig fields, prefixed)."""
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
    from safetensors.torch import save_file

    tensors = {f"transformer.{name}.lora_{part}.weight": t for name, pair in pairs.items() for part, t in zip("AB", pair)}
    save_file(tensors, path, metadata={LORA_ADAPTER_METADATA_KEY: json.dumps(config)})
    return str(path)


def _bad_lora(folder: Path, pairs: dict, name: str) -> str:
    from devtools.tiny_lora import write_diffusers_layout

    return str(write_diffusers_layout(folder / f"{name}.safetensors", pairs))


@pytest.fixture(scope="module")
def bad_files(tiny_checkpoint, tmp_path_factory) -> dict[str, str]:
    """LoRAs that do not fit the tiny experts or hold values no adapter has, each wrong in one way."""
    from devtools.tiny_lora import lora_pairs, write_diffusers_layout

    folder = tmp_path_factory.mktemp("bad-loras")
    fine = lora_pairs({"blocks.0.attn1.to_q": (96, 96)}, seed=1)
    (folder / "pickled.pt").write_bytes(b"not loaded")
    (folder / "garbage.safetensors").write_bytes(b"\x00" * 64)
    return {
        "shape": _bad_lora(folder, lora_pairs({"blocks.0.attn1.to_q": (64, 96)}, seed=1), "shape"),
        "module": _bad_lora(folder, lora_pairs({"blocks.7.attn1.to_q": (96, 96)}, seed=1), "module"),
        "not_linear": _bad_lora(folder, lora_pairs({"blocks.0.norm2": (96, 96)}, seed=1), "not_linear"),
        "nan": _bad_lora(folder, {k: (d, torch.full_like(u, float("nan"))) for k, (d, u) in fine.items()}, "nan"),
        "huge": _bad_lora(folder, {k: (d * 1e30, u) for k, (d, u) in fine.items()}, "huge"),
        "huge_alpha": str(write_diffusers_layout(folder / "huge_alpha.safetensors", fine, lora_alpha=10**30)),
        "negative_rank": _with_metadata(folder / "negative_rank.safetensors", fine, {"transformer.r": -4}),
        "pickled": str(folder / "pickled.pt"),
        "garbage": str(folder / "garbage.safetensors"),
        "missing": str(folder / "missing.safetensors"),
    }


@pytest.mark.parametrize("case, message", [
    ("shape", r"blocks\.0\.attn1\.to_q\.lora_A\.weight has shape \[4, 64\], the expert's Linear\(96, 96\) needs \[4, 96\]"),
    ("module", r"blocks\.7\.attn1\.to_q targets no such module"),
    ("not_linear", r"blocks\.0\.norm2 targets a FP32LayerNorm"),
    ("nan", r"lora_B\.weight' holds NaN or infinite values"),
    ("huge", r"lora_A\.weight' holds [0-9.]+e\+29, more than a LoRA weight's bound"),
    ("huge_alpha", r"metadata lora_alpha is 1000000000000000000000000000000; it must be a number in"),
    ("negative_rank", r"metadata r is -4; it must be a number in"),
    ("pickled", r"must be \.safetensors"),
    ("garbage", r"not a Wan LoRA layout diffusers can read"),
    ("missing", r"no such LoRA file"),
])
def test_export_refuses_a_lora_that_does_not_fit(tiny_checkpoint, tmp_path, bad_files, case, message):
    opts = ExportOptions(lora=(LoraSource("bad", (bad_files[case],)),))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        export_repository(tiny_checkpoint, tmp_path, opts, log=lambda _: None)
    assert not any(tmp_path.iterdir())  # refused before writing anything


@pytest.mark.parametrize("opts, message", [
    (ExportOptions(lora=(LoraSource("a/b", ("x.safetensors",)),)), "--lora name must be 1-64"),
    (ExportOptions(lora=(LoraSource("a", ("1.safetensors", "2.safetensors", "3.safetensors")),)), "one file for every"),
    (ExportOptions(engine="onnx", lora=(LoraSource("a", ("x.safetensors",)),)), "--lora needs engine 'torch'"),
    (ExportOptions(low_memory=True, lora=(LoraSource("a", ("x.safetensors",)),)), "without --low-memory"),
    (ExportOptions(speed=SpeedOptions(compile="regional"), lora=(LoraSource("a", ("x.safetensors",)),)), "--compile"),
    (ExportOptions(parallel=ParallelPlan(ulysses=2), lora=(LoraSource("a", ("x.safetensors",)),)), "ulysses > 1"),
])
def test_export_refuses_lora_options_that_cannot_be_served(tiny_checkpoint, tmp_path, opts, message):
    with pytest.raises(ValueError, match=message):
        export_repository(tiny_checkpoint, tmp_path, opts, log=lambda _: None)
    assert not any(tmp_path.iterdir())


def test_cfg_parallel_halves_carry_the_requests_lora():
    calls = []
    expert = split_cfg(lambda model, latents, t, embeds, **kw: (calls.append(kw), latents)[1], ThreadPoolExecutor(2))
    expert("x", torch.zeros(2, 1), torch.zeros(2), torch.zeros(2, 1), lora=("style", 0.5))
    assert calls == [{"lora": ("style", 0.5)}] * 2


def test_lora_flag_parses_one_file_or_a_pair():
    from export.__main__ import _pick, _add_flags
    import argparse

    parser = argparse.ArgumentParser()
    _add_flags(parser, ExportOptions)
    opts = _pick(ExportOptions, parser.parse_args(["--lora", "a=x.safetensors", "--lora", "b=h.safetensors,l.safetensors"]))
    assert opts.lora == (LoraSource("a", ("x.safetensors",)), LoraSource("b", ("h.safetensors", "l.safetensors")))


def test_expert_load_refuses_a_lora_that_does_not_fit(tiny_checkpoint, tmp_path, bad_files):
    """What the served expert does at load with a file that does not fit (a hand-edited repository)."""
    import shutil

    from diffusers import WanTransformer3DModel

    (tmp_path / "loras").mkdir()
    shutil.copyfile(bad_files["shape"], tmp_path / "loras" / "bad.safetensors")
    model = WanTransformer3DModel.from_pretrained(tiny_checkpoint / "transformer")
    with pytest.raises(ValueError, match=r"LoRA 'bad' .*lora_A\.weight has shape \[4, 64\]"):
        ExpertAdapters.load(model, tmp_path, ("bad",), log=lambda _: None)
    shutil.copyfile(bad_files["nan"], tmp_path / "loras" / "bad.safetensors")  # fits, but no adapter holds NaN
    with pytest.raises(ValueError, match=r"LoRA 'bad' .*lora_B\.weight' holds NaN"):
        ExpertAdapters.load(model, tmp_path, ("bad",), log=lambda _: None)


def test_fp8_filter_takes_the_base_layers_never_the_lora_pairs(experts):
    """The FP8 tier's filter (fast_path) takes the adapted layers' base Linear, never peft's lora_A / lora_B."""
    from wan22_triton.speed.fast_path import _block_linear

    model = next(iter(experts.values())).model
    chosen = [fqn for fqn, module in model.named_modules() if _block_linear(module, fqn)]
    assert chosen and all(fqn.endswith(".base_layer") for fqn in chosen)
    assert len(chosen) == sum(1 for fqn, _ in model.named_modules() if fqn.endswith(".lora_A"))


# ---- a real tritonserver ----

@pytest.fixture(scope="module")
def lora_server(served, sources):
    # 4 orchestrator instances: the concurrency test's requests all run at once
    return served(ExportOptions(limits=TEST_LIMITS, orchestrator_instances=4, lora=sources))


def test_served_lora_is_the_pipelines(lora_server, reference_pipe, manifest, experts):
    request = {**SMALL, "lora": "pair", "lora_scale": 0.8}
    served = grpc_client.generate(lora_server.grpc_url, request)["video"]
    expected, _ = generate(reference_pipe, manifest, experts, request)
    assert np.array_equal(served, expected.video)


def test_concurrent_requests_with_different_loras_each_get_their_solo_result(lora_server, reference_pipe, manifest,
                                                                             experts):
    """Four requests in flight on four orchestrator instances: their steps interleave on each expert instance,
    every call with its own adapter."""
    choices = [{"lora": "style"}, {"lora": "pair", "lora_scale": 0.5}, {}, {"lora": "style", "lora_scale": -1.5}]
    requests = [{**SMALL, **c} for c in choices]
    solo = [grpc_client.generate(lora_server.grpc_url, r)["video"] for r in requests]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda r: grpc_client.generate(lora_server.grpc_url, r)["video"], requests))
    for a, b in zip(solo, together):
        assert np.array_equal(a, b)
    assert len({v.tobytes() for v in solo}) == 4  # four different videos
    base, _ = generate(reference_pipe, manifest, experts, SMALL)
    assert np.array_equal(solo[2], base.video)


SERVED_BAD = [
    ({"lora": "nope"}, "lora"), ({"lora": "../style"}, "lora"), ({"lora": "style", "lora_scale": float("nan")}, "lora_scale"),
    ({"lora": "style", "lora_scale": -5.0}, "lora_scale"), ({"preset": "turbo"}, "preset"),
]


@pytest.mark.parametrize("bad, field", SERVED_BAD, ids=[f"{f}-{i}" for i, (_, f) in enumerate(SERVED_BAD)])
def test_bad_lora_inputs_are_invalid_arg_and_the_server_keeps_serving(lora_server, bad, field):
    good = dict(prompt="ok", num_frames=5, height=32, width=32, num_inference_steps=1, seed=1, lora="style")
    with pytest.raises(InferenceServerException) as err:
        grpc_client.generate(lora_server.grpc_url, {**good, **bad})
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and f"'{field}'" in err.value.message()
    assert grpc_client.generate(lora_server.grpc_url, good)["video"].shape == (5, 32, 32, 3)


@pytest.mark.parametrize("name, scale, message", [
    (b"../../etc/passwd", 1.0, "'lora' '../../etc/passwd' is not loaded"),
    (b"style", 100.0, "'lora_scale' must be a finite number within [-4, 4], got 100.0"),
])
def test_expert_called_directly_refuses_what_the_orchestrator_would(lora_server, manifest, name, scale, message):
    from wan22_triton.components.expert import transformer_spec

    expert = expert_models(manifest.checkpoint)[0]
    tensors = transformer_spec(manifest.checkpoint, expert).sample_inputs({"batch": 1})
    tensors["timestep"] = tensors["timestep"].reshape(-1, 1)
    tensors["lora"] = np.array([[name]], dtype=object)
    tensors["lora_scale"] = np.array([[scale]], dtype=np.float32)
    with grpcclient.InferenceServerClient(lora_server.grpc_url) as client:
        feeds = []
        for key, array in tensors.items():
            feeds.append(grpcclient.InferInput(key, list(array.shape), "BYTES" if array.dtype == object else "FP32"))
            feeds[-1].set_data_from_numpy(array)
        with pytest.raises(InferenceServerException) as err:
            client.infer(expert, feeds)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and message in err.value.message()


def test_served_preset_runs_its_steps_without_cfg_and_streams_progress(lora_server, reference_pipe, manifest, experts):
    request = dict(prompt="a red panda", num_frames=5, height=32, width=32, seed=9, preset=PRESET.name)
    with grpcclient.InferenceServerClient(lora_server.grpc_url) as client:
        outputs = [grpcclient.InferRequestedOutput(n) for n in ("video", "step_experts", "step_timesteps")]
        result = client.infer("wan22_t2v", grpc_client.infer_inputs(request), outputs=outputs)
    expected, calls = generate(reference_pipe, manifest, experts, request)
    assert [e.decode() for e in result.as_numpy("step_experts")] == expected.experts
    assert list(result.as_numpy("step_timesteps")) == pytest.approx([1000.0, 937.5, 833.333, 625.0], abs=1e-3)
    assert [batch for _, batch, _ in calls] == [1] * PRESET.num_inference_steps  # CFG off
    assert np.array_equal(result.as_numpy("video"), expected.video)
    progress: list = []
    streamed = grpc_client.generate_stream(lora_server.grpc_url, request, progress.append)
    assert [p["step"] for p in progress] == [1, 2, 3, 4] and np.array_equal(streamed["video"], expected.video)


@pytest.mark.parametrize("field, value", [("lora", "x" * 20000), ("lora", "a/" * 10000), ("preset", "p" * 20000)])
def test_a_refusal_quotes_a_huge_value_by_its_size_not_whole(manifest, field, value):
    with pytest.raises(RequestError) as refused:
        validate_request(inputs({"prompt": "x", field: value}), manifest)
    assert field in str(refused.value) and len(str(refused.value)) < 400, str(refused.value)[:500]
