"""Every served tensor and model name is typed once, in the module that declares it (wan22_triton.components, the
request contract): a string literal equal to one anywhere else in the project's code fails here, with file:line.

A word that is also a served name but means something else where it appears is listed in OTHER_MEANINGS with why.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from wan22_triton.components import expert, orchestrator, text_encoder, vae_decoder, vae_encoder
from wan22_triton.components.common import CacheEntry, ComponentSpec
from wan22_triton.request import contract

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("clients", "devtools", "docker", "export", "perf", "server", "wan22_triton")

# (word, why it is not the served name there, files where it appears so)
OTHER_MEANINGS = (
    ("frames", "the output_format value (OutputFormat.FRAMES)", {"wan22_triton/request/contract.py"}),
    ("stage_seconds", "the metric family's key", {"wan22_triton/operations/metrics.py"}),
    ("release_workspace", "a message to the sequence-parallel workers", {"wan22_triton/parallel/worker_group.py"}),
    ("timestep", "a key of the progress JSON (pipeline.StepInfo)", {"clients/grpc_client.py"}),
    ("text", "a key of Grafana's dashboard JSON", {"docker/kubernetes/wan22_k8s/dashboard.py"}),
    ("release", "the Helm release label", {"docker/kubernetes/wan22_k8s/values.py"}),
    ("num_frames", "a key of the shape-spec JSON (ShapeSpec.num_frames)",
     {"export/tensorrt_build.py", "perf/first_request_benchmark/export_phase.py"}),
    ("lora", "the export's option (ExportOptions.lora)", {"export/__main__.py"}),
    ("warmup", "Triton's warm-up phase: the export's option, its folder, the benchmarks' warm-up runs",
     {"export/__main__.py", "export/model_config.py", "perf/perf_analyzer_sweep.py", "perf/lora_benchmark.py",
      "perf/first_request_benchmark/export_phase.py", "perf/first_request_benchmark/plan.py",
      "perf/first_request_benchmark/report.py", "perf/first_request_benchmark/serve_phase.py"}),
    ("preset", "the GPU checkpoint's size preset", {"perf/first_request_benchmark/export_phase.py"}),
    ("lora", "the LoRA benchmark's request kind and result keys", {"perf/lora_benchmark.py"}),
    ("preset", "the LoRA benchmark's request kind and result keys", {"perf/lora_benchmark.py"}),
    ("latents", "a key of the probe's results JSON", {"perf/attention_probe.py"}),
    ("width", "a key of the probe's results JSON", {"perf/attention_probe.py"}),
    ("text_encoder", "diffusers' sub-folder and module of the text encoder",
     {"wan22_triton/checkpoint.py", "wan22_triton/engines/random_weights.py",
      "wan22_triton/triton_models/text_encoder.py", "perf/gpu_baseline.py", "perf/gpu_checkpoint.py",
      "perf/gpu_benchmark/measure.py"}),
    ("image", "a Kubernetes container's image", {"docker/kubernetes/wan22_k8s/workload.py"}),
    ("transformer", "diffusers' sub-folder and pipeline attribute of the (first) transformer, and its module",
     {"wan22_triton/checkpoint.py", "wan22_triton/engines/loading.py", "wan22_triton/engines/random_weights.py",
      "wan22_triton/triton_models/transformer.py", "devtools/tiny_lora.py", "perf/gpu_baseline.py",
      "perf/gpu_benchmark/__main__.py", "perf/gpu_checkpoint.py", "perf/lora_benchmark.py", "perf/memory_check.py"}),
)


def _names(*specs: ComponentSpec, inputs: bool = True, outputs: bool = True) -> set[str]:
    return {t.name for s in specs for t in (*(s.inputs if inputs else ()), *(s.outputs if outputs else ()))}


def declared(info) -> dict[str, set[str]]:
    """Served name -> the modules that declare it (relative paths): every tensor of every served model, optional
    inputs and frame graphs included, and every model name."""
    frame_specs = vae_decoder.vae_decoder_frame_specs(info, [CacheEntry(4, 1), CacheEntry(4, 2)])
    owners = {
        text_encoder: _names(text_encoder.text_encoder_spec(info)) | {text_encoder.TEXT_ENCODER},
        expert: _names(expert.transformer_offload_spec(info, expert.TRANSFORMER_HIGH_NOISE))
        | {t.name for t in (*expert.LORA_INPUTS, expert.WORKSPACE_INPUT, expert.WARMUP_INPUT)}
        | {*expert.EXPERT_MODELS.values(), expert.TRANSFORMER},
        vae_encoder: _names(vae_encoder.vae_encoder_spec(info), outputs=False) | {vae_encoder.VAE_ENCODER},
        vae_decoder: _names(vae_decoder.vae_decoder_spec(info), *frame_specs)
        | {vae_decoder.VAE_DECODER, *vae_decoder.VAE_DECODER_FRAME_MODELS},
        orchestrator: _names(orchestrator.orchestrator_spec(stream=True), inputs=False)
        | {name for model in orchestrator.ORCHESTRATOR_MODELS.values()
           for name in (model, orchestrator.stream_model(model))},
        contract: _names(orchestrator.orchestrator_spec(), outputs=False),
    }
    out: dict[str, set[str]] = {}
    for module, names in owners.items():
        for name in names:
            out.setdefault(name, set()).add(Path(module.__file__).relative_to(ROOT).as_posix())
    return out


def literals(tree: ast.AST, words: set[str]) -> list[tuple[int, str]]:
    """(line, value) of every string constant equal to one of `words`."""
    return sorted((node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in words)


@pytest.fixture(scope="module")
def served(tiny_checkpoint) -> dict[str, set[str]]:
    from wan22_triton.checkpoint import read_checkpoint

    return declared(read_checkpoint(tiny_checkpoint))


def test_no_served_name_is_a_literal_outside_its_declaration(served):
    allowed = {(word, path) for word, _, paths in OTHER_MEANINGS for path in paths}
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for line, value in literals(ast.parse(path.read_text(), rel), set(served)):
                if rel not in served[value] and (value, rel) not in allowed:
                    found.append(f"{rel}:{line}: {value!r}")
    assert not found, ("import the name from the module that declares it (wan22_triton.components.*, "
                       "wan22_triton.request.contract):\n" + "\n".join(found))


def test_the_declarations_cover_every_served_model_and_the_frame_graphs(served):
    assert {"hidden_states", "noise_pred", "release", "warmup", "latent_frame", "cache_in_1", "progress",
            "prompt", "preset", "wan22_t2v_stream", "wan22_ti2v", "transformer", "vae_decoder_step"} <= set(served)
    assert served["lora"] == {"wan22_triton/components/expert.py", "wan22_triton/request/contract.py"}


def test_the_scan_finds_literals_in_keys_calls_and_comparisons():
    source = 'x = {"hidden_states": 1}; f("noise_pred"); y = a == "video"; z = f"{a}_video"; """video docs"""'
    assert literals(ast.parse(source), {"hidden_states", "noise_pred", "video"}) == [
        (1, "hidden_states"), (1, "noise_pred"), (1, "video")]


def test_every_allowed_word_is_still_used_so(served):
    """An entry of OTHER_MEANINGS whose literal is gone goes too."""
    stale = [f"{word} in {path}" for word, _, paths in OTHER_MEANINGS for path in sorted(paths)
             if not (ROOT / path).is_file() or not literals(ast.parse((ROOT / path).read_text()), {word})]
    assert not stale, "remove from OTHER_MEANINGS: " + ", ".join(stale)
    assert all(word in served for word, _, _ in OTHER_MEANINGS)
