"""Export's expert speed options: written into the experts' configs where they apply, refused where they can't run."""

from __future__ import annotations

import pytest

from export.model_config import parse_pbtxt, read_manifest
from export.repository import ExportOptions, export_repository
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
