"""Export's expert speed options: written into the experts' configs where they apply, refused where they can't run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from export.model_config import parse_pbtxt, read_manifest
from export.repository import ExportOptions, export_repository
from wan22_triton import options
from wan22_triton.manifest import SpeedOptions

EXPERTS = ("transformer_high_noise", "transformer_low_noise")


def test_speed_options_become_expert_parameters(tiny_checkpoint, tmp_path):
    speed = SpeedOptions(compile="regional", quantization="fp8_rowwise", attention="fp8_cudnn")
    opts = ExportOptions(engine="torch", device="gpu", precision="bf16", speed=speed)
    export_repository(tiny_checkpoint, tmp_path, opts, log=lambda _: None)
    for name in EXPERTS:
        assert read_manifest(tmp_path / name).speed.chosen() == {
            "compile": "regional", "quantization": "fp8_rowwise", "attention": "fp8_cudnn"}
    for other in ("text_encoder", "vae_decoder", "wan22_t2v"):
        assert read_manifest(tmp_path / other).speed == SpeedOptions()
    # On a GPU the orchestrator runs there too, and the models it hands CUDA tensors keep them on the GPU.
    for name in ("wan22_t2v", "wan22_t2v_stream", *EXPERTS, "vae_decoder"):
        config = parse_pbtxt((tmp_path / name / "config.pbtxt").read_text())
        assert [g.kind for g in config.instance_group] == [config.instance_group[0].KIND_GPU]
    for name in (*EXPERTS, "vae_decoder"):
        params = parse_pbtxt((tmp_path / name / "config.pbtxt").read_text()).parameters
        assert params["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"


def test_defaults_write_no_speed_parameters(tiny_checkpoint, tmp_path):
    export_repository(tiny_checkpoint, tmp_path, ExportOptions(), log=lambda _: None)
    params = parse_pbtxt((tmp_path / EXPERTS[0] / "config.pbtxt").read_text()).parameters
    assert "FORCE_CPU_ONLY_INPUT_TENSORS" not in params and not read_manifest(tmp_path / EXPERTS[0]).speed.chosen()
    orchestrator = parse_pbtxt((tmp_path / "wan22_t2v" / "config.pbtxt").read_text())
    assert orchestrator.instance_group[0].kind == orchestrator.instance_group[0].KIND_CPU


@pytest.mark.parametrize("opts, message", [
    (ExportOptions(engine="onnx", speed=SpeedOptions(compile="regional")), "need engine 'torch'"),
    (ExportOptions(engine="torch", device="cpu", speed=SpeedOptions(attention="fp8_cudnn")), "need --device gpu"),
    (ExportOptions(engine="torch", device="cpu", speed=SpeedOptions(attention="flash_attn_4")), "need --device gpu"),
    (ExportOptions(engine="onnx", device="gpu", speed=SpeedOptions(attention="flash_attn_4")), "need engine 'torch'"),
    (ExportOptions(engine="torch", device="gpu", speed=SpeedOptions(quantization="fp8_rowwise"), low_memory=True), "does not support"),
    (ExportOptions(engine="torch", speed=SpeedOptions(attention="flash")), "attention must be one of"),
])
def test_options_that_cannot_run_are_refused(tiny_checkpoint, tmp_path, opts, message):
    with pytest.raises(ValueError, match=message):
        export_repository(tiny_checkpoint, tmp_path, opts, log=lambda _: None)
    assert not any(tmp_path.iterdir())  # refused before writing anything


@pytest.mark.parametrize("option", [dict(attention="flash_attn_4"), dict(attention="fp8_cudnn"),
                                    dict(quantization="fp8_rowwise")])
def test_gpu_kernels_are_refused_at_load_where_no_gpu_can_run_them(tiny_checkpoint, option):
    # What the expert model's setup runs: a hand-edited config asking for a GPU kernel fails loading with the reason.
    import torch
    from diffusers import WanTransformer3DModel

    from wan22_triton.speed.fast_path import optimize_transformer

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    model = WanTransformer3DModel.from_pretrained(tiny_checkpoint / "transformer")
    with pytest.raises(ValueError, match=f"{next(iter(option.values()))} needs a CUDA GPU"):
        optimize_transformer(model, SpeedOptions(**option), log=lambda _: None)


ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("clients", "devtools", "docker", "export", "perf", "server", "wan22_triton")
OPTION_VALUES = {member.value for kind in (options.Engine, options.Device, options.Precision, options.Compile,
                                           options.Quantization, options.Attention) for member in kind}


def _string_comparisons(tree: ast.AST):
    """(line, value) of each `==`, `!=`, `in`, `not in` between a name and an option value as a string literal; a
    torch device's `.type` (torch's "cpu"/"cuda", not our option) aside."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands, operands[1:]):
            if not isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)):
                continue
            for side, other in ((left, right), (right, left)):
                items = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                found = [i.value for i in items if isinstance(i, ast.Constant) and i.value in OPTION_VALUES]
                if found and not (isinstance(other, ast.Attribute) and other.attr == "type"):
                    yield node.lineno, found[0]


def test_no_option_value_is_compared_as_a_string():
    # Engine, device, precision and speed options are enums (wan22_triton.options): code compares members.
    found = [f"{path.relative_to(ROOT)}:{line}: {value!r}"
             for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
             for line, value in _string_comparisons(ast.parse(path.read_text(), str(path)))]
    assert not found, "compare with the enum members of wan22_triton.options:\n" + "\n".join(found)


def test_the_scan_finds_string_comparisons():
    source = 'if engine == "torch" or device != "gpu" or p in ("fp16", "bf16") or d.type == "cpu": pass'
    assert [value for _, value in _string_comparisons(ast.parse(source))] == ["torch", "gpu", "fp16"]


def test_manifest_options_round_trip_as_enum_members(tiny_checkpoint):
    from wan22_triton.checkpoint import read_checkpoint
    from wan22_triton.manifest import Manifest

    manifest = Manifest(model="m", engine=options.Engine.ONNX, precision=options.Precision.BF16,
                        checkpoint=read_checkpoint(tiny_checkpoint),
                        speed=SpeedOptions(compile=options.Compile.REGIONAL))
    assert '"engine": "onnx"' in manifest.to_json() and '"compile": "regional"' in manifest.to_json()
    back = Manifest.from_json(manifest.to_json())
    assert back.speed == manifest.speed and back.parallel == manifest.parallel
    assert back.engine is options.Engine.ONNX and back.precision is options.Precision.BF16
    assert back.speed.compile is options.Compile.REGIONAL and back.speed.attention is options.Attention.SDPA
    with pytest.raises(ValueError, match="engine must be one of torch, onnx, tensorrt, got 'jax'"):
        Manifest.from_json(manifest.to_json().replace('"onnx"', '"jax"'))


def test_export_flags_take_the_enum_values():
    import argparse

    from export.__main__ import _add_flags, _pick

    parser = argparse.ArgumentParser()
    for kind in (ExportOptions, SpeedOptions):
        _add_flags(parser, kind)
    args = parser.parse_args(["--engine", "onnx", "--device", "gpu", "--precision", "fp16", "--attention", "fp8_cudnn"])
    opts, speed = _pick(ExportOptions, args), _pick(SpeedOptions, args)
    assert (opts.engine, opts.device, opts.precision) == (options.Engine.ONNX, options.Device.GPU,
                                                          options.Precision.FP16)
    assert speed.attention is options.Attention.FP8_CUDNN
    assert "{torch,onnx,tensorrt}" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp64"])


def test_each_model_picks_its_engines_runner_and_refuses_an_engine_it_has_none_for():
    import types

    from wan22_triton.engines import runners
    from wan22_triton.triton_models import onnx_graph, text_encoder, transformer, vae_decoder

    def model(engine):
        return types.SimpleNamespace(name="m", manifest=types.SimpleNamespace(engine=engine))

    assert set(text_encoder.RUNNERS) == set(vae_decoder.RUNNERS) == set(options.Engine)  # PyTorch or BLS: any engine
    assert set(transformer.RUNNERS) == {options.Engine.TORCH, options.Engine.ONNX}  # TensorRT: Triton's backend
    assert runners.pick({options.Engine.ONNX: lambda m: m.name}, model("onnx")) == "m"
    for table in (transformer.RUNNERS, onnx_graph.RUNNERS):
        with pytest.raises(ValueError, match="m: engine 'tensorrt' is not served by this Python model"):
            runners.pick(table, model(options.Engine.TENSORRT))


def test_a_hand_edited_manifest_is_refused_at_load_by_the_export_rules(tiny_checkpoint):
    from wan22_triton.checkpoint import read_checkpoint
    from wan22_triton.manifest import Manifest

    info = read_checkpoint(tiny_checkpoint)
    fp8 = SpeedOptions(quantization=options.Quantization.FP8_ROWWISE)
    Manifest(model="e", engine=options.Engine.TORCH, precision=options.Precision.BF16, checkpoint=info,
             speed=fp8).check(options.Device.GPU)
    for manifest, device, message in [
        (Manifest(model="e", engine="torch", precision="bf16", checkpoint=info, speed=fp8, low_memory=True),
         options.Device.GPU, "low_memory does not support quantization"),
        (Manifest(model="e", engine="torch", precision="bf16", checkpoint=info, speed=fp8), options.Device.CPU,
         "need --device gpu"),
        (Manifest(model="e", engine="onnx", precision="fp32", checkpoint=info, low_memory=True), options.Device.CPU,
         "low_memory needs engine 'torch'"),
        (Manifest(model="e", engine="torch", precision="fp32", checkpoint=info, loras=("style",),
                  speed=SpeedOptions(compile=options.Compile.REGIONAL)), options.Device.CPU, "--lora needs"),
    ]:
        with pytest.raises(ValueError, match=message):
            manifest.check(device)


@pytest.mark.parametrize("case", ["no-checkpoint", "bad-lora", "tensorrt-without-builder"])
def test_export_errors_are_one_line_with_a_way_forward(tiny_checkpoint, tmp_path, case):
    import subprocess
    import sys

    from export.tensorrt_engine import tensorrt_available

    if case == "tensorrt-without-builder" and tensorrt_available():
        pytest.fail("this check needs a machine without TensorRT's builder")
    bad_lora = tmp_path / "broken.safetensors"
    bad_lora.write_bytes(b"not a safetensors file")
    args, says = {
        "no-checkpoint": (["--checkpoint", str(tmp_path / "missing")], "huggingface-cli download"),
        "bad-lora": (["--checkpoint", str(tiny_checkpoint), f"--lora=s={bad_lora}"], "broken.safetensors"),
        "tensorrt-without-builder": (["--checkpoint", str(tiny_checkpoint), "--engine", "tensorrt", "--device", "gpu",
                                      "--precision", "fp16"], "make docker-export"),
    }[case]
    repo = tmp_path / "repo"
    done = subprocess.run([sys.executable, "-m", "export", *args, "--repository", str(repo)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and says in line, line
    assert not repo.exists() or not any(repo.iterdir())  # refused before any model was written
