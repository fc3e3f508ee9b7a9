"""GPU memory known before READY (wan22_triton.memory.budget): the model against the peaks measured on H100 and H200
cards (perf/results/gpu/), the load refusal, the request check, and what the export writes.

The full A14B architecture is counted on the meta device from perf.gpu_checkpoint's configs (no weights)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from export.memory import memory_model
from export.options import ExportOptions
from export.repository import export_repository
from wan22_triton.checkpoint import read_checkpoint
from wan22_triton.errors import DoesNotFit, RequestError
from wan22_triton.manifest import Manifest
from wan22_triton.memory.budget import GIB, check_load
from wan22_triton.options import Attention, Compile, Device, Precision, Quantization, SpeedOptions
from wan22_triton.request.validation import validate_request

from .conftest import ROOT, TEST_LIMITS

pytestmark = pytest.mark.slow
RESULTS = ROOT / "perf" / "results" / "gpu"
H100_BYTES = int(79.2 * GIB)  # what an 80 GB H100 offers
BF16 = ExportOptions(device=Device.GPU, precision=Precision.BF16)
FP8 = replace(BF16, speed=SpeedOptions(quantization=Quantization.FP8_ROWWISE, attention=Attention.FP8_CUDNN))
FAST = replace(FP8, speed=replace(FP8.speed, compile=Compile.REGIONAL))
TOLERANCE = 0.04


def measured(path: str, *keys: str) -> tuple[float, tuple[int, int, int]]:
    """A peak (GiB, as the results record it) and its workload's size from a results.json."""
    data = json.loads((RESULTS / path).read_text())
    value = data
    for key in keys:
        value = value[key]
    workload = data["workload"]
    return float(value) * GIB, (workload["num_frames"], workload["height"], workload["width"])


@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
    from devtools.tiny_lora import write_random_lora
    from export.loras import LoraSource
    from perf.gpu_checkpoint import write_configs_checkpoint

    root = write_configs_checkpoint(tmp_path_factory.mktemp("a14b") / "ckpt")
    lora = root.parent / "lora.safetensors"  # the benchmark's: rank 64 in Wan2.2-Lightning's layout
    write_random_lora(json.loads((root / "transformer" / "config.json").read_text()), lora, 64, 1)
    return read_checkpoint(root), (LoraSource("l", (str(lora),)),)


@pytest.mark.parametrize("opts, result, keys, phases", [
    pytest.param(FAST, "gpu_benchmark/results.json", ("variants", "fp8_attention", "peak_gpu_memory_request_gb"),
                 ("step", "decode", "encode"), id="fast-tier-request-h100"),
    pytest.param(replace(BF16, low_memory=True), "low_memory/results.json",
                 ("variants", "bf16_lowmem", "peak_gpu_memory_gb"), None, id="bf16-low-memory-h100"),
    pytest.param("bf16+lora", "lora/results.json", ("tiers", "bf16", "peak_gpu_memory_gb"), None, id="bf16-lora-h200"),
    pytest.param("fp8+lora", "lora/results.json", ("tiers", "fp8", "peak_gpu_memory_gb"), None, id="fp8-lora-h200"),
    pytest.param(FP8, "memory_budget/results.json", ("tiers", "fp8_eager", "start_peak_gib"), ("load",),
                 id="fp8-eager-start-h100"),  # the FP8 experts load one at a time
    pytest.param(FP8, "memory_budget/results.json", ("tiers", "fp8_eager", "request_peak_gib"),
                 ("step", "decode", "encode"), id="fp8-eager-request-h100"),
])
def test_the_model_matches_the_measured_peaks(a14b, opts, result, keys, phases):
    info, lora = a14b
    opts = {"bf16+lora": replace(BF16, lora=lora), "fp8+lora": replace(FP8, lora=lora)}.get(opts, opts)
    peak, size = measured(result, *keys)
    need = memory_model(info, opts).need(info, size)
    predicted = max(need.phases[p] for p in phases) if phases else need.bytes
    assert abs(predicted - peak) <= TOLERANCE * peak, (predicted / GIB, peak / GIB, need.describe())


def test_an_h100_takes_the_fast_and_lora_tiers_and_refuses_bf16(a14b):
    info, lora = a14b
    for opts in (FAST, replace(FP8, lora=lora), replace(BF16, low_memory=True), replace(BF16, text_encoder_offload=True)):
        check_load(memory_model(info, opts), info, None, H100_BYTES, "wan22_t2v")
    for opts in (BF16, replace(BF16, lora=lora)):  # both ran out of memory on an H100 (docs/performance.md)
        with pytest.raises(DoesNotFit) as refused:
            check_load(memory_model(info, opts), info, None, H100_BYTES, "transformer_high_noise")
        message = str(refused.value)
        assert "\n" not in message and message.startswith("transformer_high_noise: this repository does not fit")
        assert "81x480x832 needs ~" in message and "the GPU has 79.2 GiB" in message
        assert "--quantization fp8_rowwise" in message and "--text-encoder-offload" in message
        assert ("--low-memory" in message) == (opts is BF16)  # the export refuses adapters with --low-memory


def test_the_load_check_uses_the_largest_declared_size(a14b):
    info, _ = a14b
    memory = memory_model(info, FAST)
    check_load(memory, info, ((81, 480, 832), (81, 720, 1280)), H100_BYTES, "m")
    with pytest.raises(DoesNotFit, match="161x1280x1280 needs"):
        check_load(memory, info, ((81, 480, 832), (161, 1280, 1280)), H100_BYTES, "m")


def test_the_export_writes_the_model_for_gpu_torch_repositories_only(tiny_checkpoint, tmp_path):
    def manifests(opts: ExportOptions) -> list[Manifest]:
        repo = tmp_path / str(len(list(tmp_path.iterdir())))
        export_repository(tiny_checkpoint, repo, opts, log=lambda _: None)
        return [Manifest.from_json(_manifest_text(p)) for p in sorted(repo.glob("*/config.pbtxt"))]

    gpu = manifests(ExportOptions(device=Device.GPU, precision=Precision.BF16, limits=TEST_LIMITS))
    assert len(gpu) == 6 and len({m.memory for m in gpu}) == 1 and gpu[0].memory is not None
    assert gpu[0].memory.experts_resident and gpu[0].memory.processes == 7  # tritonserver, 4 models, 2 orchestrators
    assert all(m.memory is None for m in manifests(ExportOptions(limits=TEST_LIMITS)))  # the CPU's


def test_a_request_the_card_cannot_hold_is_invalid_and_names_the_size(a14b):
    info, _ = a14b
    manifest = Manifest(model="wan22_t2v", engine=FAST.engine, precision=FAST.precision, checkpoint=info,
                        memory=memory_model(info, FAST))
    inputs = {"prompt": np.array([b"a kite"], dtype=object), "num_frames": np.array([161], np.int32),
              "height": np.array([1280], np.int32), "width": np.array([1280], np.int32)}
    with pytest.raises(RequestError) as refused:
        validate_request(inputs, manifest, H100_BYTES)
    assert str(refused.value).startswith("'num_frames' x 'height' x 'width' 161x1280x1280 needs ~")
    assert "the GPU has 79.2 GiB: ask for fewer frames or a smaller size" in str(refused.value)
    fits = {**inputs, "num_frames": np.array([81], np.int32), "height": np.array([720], np.int32)}
    assert validate_request(fits, manifest, H100_BYTES).height == 720
    assert validate_request(inputs, manifest, None).num_frames == 161  # a CPU orchestrator: no card to check


def _manifest_text(config: Path) -> str:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(config.read_text(), model_config_pb2.ModelConfig()).parameters["manifest"].string_value
