"""TensorRT engines (export/onnx_precision.py, export/tensorrt_engine.py, export/tensorrt_build.py).

Everywhere: the modules type-check with `mypy --strict` against tensorrt-stubs (and mypy rejects misused TensorRT
APIs, so the stubs really are in use); every config.pbtxt it writes parses as Triton's ModelConfig and matches the
component declarations; the FP16 expert graph that TensorRT builds from runs in onnxruntime and matches the FP32
PyTorch expert. Where `import tensorrt` works on a GPU (docker/Dockerfile.export): tiny plans are built and run.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import keyword
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export import onnx_precision as op
from export import tensorrt_build as tb
from export.tensorrt_engine import TensorRTEngine, tensorrt_available
from wan22_triton.checkpoint import read_checkpoint
from wan22_triton.components.common import Dim, ShapeSpec, TensorSpec
from wan22_triton.components.expert import (EXPERT_MODELS, TRANSFORMER_HIGH_NOISE, TRANSFORMER_LOW_NOISE,
                                            transformer_spec)
from wan22_triton.components.vae_decoder import VAE_DECODER, vae_decoder_frame_specs

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("export/onnx_precision.py", "export/tensorrt_engine.py", "export/tensorrt_build.py")
ENGINE_MODULE = "export/tensorrt_engine.py"  # where the TensorRT API is called
# FP16 expert vs FP32 PyTorch: max |diff| over max |reference|. FP16 rounds to 2^-11 ~ 4.9e-4 relative; measured
# on the tiny expert: 7e-4 and 4e-4 at the two shapes below (FP32 ONNX: 3e-6). 5e-3 leaves 7x headroom.
FP16_TOLERANCE = 5e-3
FP32_ONNX_TOLERANCE = 1e-4
SHAPES = ({"batch": 2, "latent_frames": 3, "latent_height": 4, "latent_width": 6},
          {"batch": 1, "latent_frames": 2, "latent_height": 8, "latent_width": 4})


# --------------------------------------------------------------------------------------------- mypy vs tensorrt-stubs


def _site_packages() -> Path:
    import tensorrt_stubs  # the stub distribution's marker package, next to the stub files

    return Path(tensorrt_stubs.__file__).resolve().parents[1]


def _repair(source: str) -> str:
    """Three defects of tensorrt-stubs 10.13 as shipped, fixed without changing any signature's meaning:
    parameters named `in` (a keyword: the file does not parse) are renamed; a default-less parameter after defaulted
    ones (`add_scale_nd`, also a syntax error) gets `= ...`; and the module-level `bool: DataType` (trt.bool) shadows
    the builtin in every annotation, so `-> bool` would mean "-> DataType value" (mypy: invalid type, and code after
    `if not parser.parse_from_file(...)` would be "unreachable"): annotations get `builtins.bool`."""
    source = re.sub(r"([(,]\s*)(%s)(\s*:)" % "|".join(keyword.kwlist), r"\1\2_\3", source)
    lines = [line if line.startswith("bool:") else re.sub(r"(?<![\w.])bool\b", "_builtins.bool", line)
             for line in source.splitlines()]
    future = next((i for i, line in enumerate(lines) if line.startswith("from __future__")), -1)
    lines.insert(future + 1, "import builtins as _builtins")
    for _ in range(100):
        try:
            ast.parse("\n".join(lines))
            return "\n".join(lines) + "\n"
        except SyntaxError as e:
            i = (e.lineno or 1) - 1
            head, _, rest = lines[i].partition("(")
            params, close, tail = rest.rpartition(")")
            if not close:
                raise
            seen, out = False, []
            for p in params.split(", "):
                seen = seen or "=" in p
                out.append(p if "=" in p or not seen or p.startswith("*") else p + " = ...")
            lines[i] = head + "(" + ", ".join(out) + close + tail
    raise RuntimeError("could not repair the tensorrt stubs")


@pytest.fixture(scope="module")
def mypy_config(tmp_path_factory) -> Path:
    """A mypy config whose mypy_path holds tensorrt-stubs, made parseable (see `_repair`).

    As installed, mypy does not use the stubs at all: they sit in `site-packages/tensorrt/` without a py.typed
    marker, so mypy reports "missing library stubs" (and with ignore_missing_imports would silently type `tensorrt`
    as Any). On mypy_path they are read as stubs."""
    assert importlib.util.find_spec("tensorrt_stubs"), "tensorrt-stubs is not installed: run `make setup`"
    site = _site_packages()
    stubs = tmp_path_factory.mktemp("stubs")
    for rel in ("tensorrt/__init__.pyi", "tensorrt_bindings/__init__.pyi", "tensorrt_bindings/tensorrt.pyi"):
        (stubs / rel).parent.mkdir(parents=True, exist_ok=True)
        (stubs / rel).write_text(_repair((site / rel).read_text()))
    config = stubs / "mypy.ini"
    config.write_text(
        "[mypy]\nstrict = True\nfollow_imports = silent\nwarn_unreachable = True\n"
        f"mypy_path = {stubs}\ncache_dir = {ROOT / '.mypy_cache'}\n\n"
        "[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]\n"
        "ignore_errors = True\n"  # the stubs' own style (untyped helpers), not our code
    )
    return config


def _mypy(config: Path, cwd: Path, modules: tuple[str, ...] = MODULES) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config), *modules], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_mypy_strict_against_tensorrt_stubs(mypy_config):
    result = _mypy(mypy_config, ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


# Deliberate misuses of the TensorRT API; each must be a mypy error.
MISUSES = {
    "builder.build_serialized_network(network, config)": (
        "builder.build_serialized_netwrok(network, config)",
        '"Builder" has no attribute "build_serialized_netwrok"'),
    "config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)": (
        "config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, str(workspace_bytes))",
        'Argument 2 to "set_memory_pool_limit" of "IBuilderConfig" has incompatible type "str"; expected "int"'),
    "trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED": (
        "trt.NetworkDefinitionCreationFlag.STRONGLY_TYPE",
        'has no attribute "STRONGLY_TYPE"'),
    "context.execute_async_v3(stream.cuda_stream)": (
        "context.execute_async_v3()",
        'Missing positional argument "stream_handle" in call to "execute_async_v3"'),
}


def test_mypy_rejects_tensorrt_api_misuse(mypy_config, tmp_path):
    source = (ROOT / ENGINE_MODULE).read_text()
    for good, (bad, _) in MISUSES.items():
        assert good in source, good
        source = source.replace(good, bad, 1)
    shutil.copytree(ROOT / "export", tmp_path / "export", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / ENGINE_MODULE).write_text(source)
    (tmp_path / "wan22_triton").symlink_to(ROOT / "wan22_triton")
    result = _mypy(mypy_config, tmp_path, (ENGINE_MODULE,))
    assert result.returncode == 1, result.stdout + result.stderr
    for _, message in MISUSES.values():
        assert message in result.stdout, f"mypy did not report: {message}\n{result.stdout}"
    assert f"Found {len(MISUSES)} errors" in result.stdout, result.stdout


# --------------------------------------------------------------------------------------------- configs and profiles


@pytest.fixture(scope="module")
def info(tiny_checkpoint):
    return read_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def layout(tiny_checkpoint):
    from export.onnx_export import load_vae
    from wan22_triton.engines.vae_frames import discover_cache_layout

    return discover_cache_layout(load_vae(tiny_checkpoint / "vae"))


def test_shape_spec_file_is_the_default():
    assert tb.load_shape_spec() == ShapeSpec()
    assert tb.load_shape_spec(tb.SHAPE_SPEC_FILE) == tb.load_shape_spec()


def test_profiles_one_per_shape_spec_entry(info, layout):
    spec = transformer_spec(info, TRANSFORMER_HIGH_NOISE)
    shape_spec = ShapeSpec(num_frames=(81, 33), resolutions=((480, 832), (720, 1280)), max_batch=2)
    profiles = [spec.profile(r) for r in tb.profile_ranges(spec, shape_spec, info)]
    assert len(profiles) == 4
    c = info.in_channels
    assert profiles[0]["hidden_states"] == ((1, c, 21, 60, 104), (2, c, 21, 60, 104), (2, c, 21, 60, 104))
    assert profiles[1]["hidden_states"] == ((1, c, 21, 90, 160), (2, c, 21, 90, 160), (2, c, 21, 90, 160))
    assert profiles[2]["hidden_states"][2] == (2, c, 9, 60, 104)
    assert profiles[0]["timestep"] == ((1,), (2,), (2,))
    assert profiles[0]["encoder_hidden_states"] == ((1, info.text_len, info.text_dim),
                                                     (2, info.text_len, info.text_dim),
                                                     (2, info.text_len, info.text_dim))
    # The VAE frame graphs see neither the frame count nor batches > their max_batch_size (1).
    first, step = vae_decoder_frame_specs(info, layout)
    vae_profiles = [step.profile(r) for r in tb.profile_ranges(step, shape_spec, info)]
    assert len(vae_profiles) == 2
    assert vae_profiles[1]["latent_frame"] == ((1, info.z_dim, 1, 90, 160),) * 3
    for i, entry in enumerate(layout):
        assert vae_profiles[0][f"cache_in_{i}"] == ((1, entry.channels, 2, 60 * entry.scale, 104 * entry.scale),) * 3


def _dims(tensor: TensorSpec, batched: bool) -> list[int]:
    shape = tensor.shape[1:] if batched else tensor.shape
    return [-1 if isinstance(d, Dim) else d for d in shape] or [1]


def test_configs_parse_and_match_declarations(tmp_path, info, layout):
    shape_spec = tb.load_shape_spec()
    written = tb.write_tensorrt_configs(tmp_path, info, layout, precision="fp16", shape_spec=shape_spec)
    first, step = vae_decoder_frame_specs(info, layout)
    specs = {s.name: s for s in (transformer_spec(info, TRANSFORMER_HIGH_NOISE),
                                 transformer_spec(info, TRANSFORMER_LOW_NOISE), first, step)}
    assert set(written) == set(specs) == {"transformer_high_noise", "transformer_low_noise", "vae_decoder_first_frame",
                                          "vae_decoder_step"}
    for name, path in written.items():
        assert path == tmp_path / name / "config.pbtxt"
        config = text_format.Parse(path.read_text(), mc.ModelConfig())
        spec = specs[name]
        assert config.name == name
        assert config.platform == "tensorrt_plan" and config.backend == ""
        assert config.default_model_filename == "model.plan"
        assert config.max_batch_size == spec.max_batch_size
        assert len(config.instance_group) == 1
        group = config.instance_group[0]
        assert group.kind == mc.ModelInstanceGroup.KIND_GPU
        assert list(group.profile) == [str(i) for i in range(len(tb.profile_ranges(spec, shape_spec, info)))]
        batched = spec.max_batch_size > 0
        for got, want in ((config.input, spec.inputs), (config.output, spec.outputs)):
            assert [t.name for t in got] == [t.name for t in want]
            for g, w in zip(got, want):
                assert mc.DataType.Name(g.data_type) == f"TYPE_{w.triton_dtype}"
                assert list(g.dims) == _dims(w, batched), (name, g.name)
        # A batch-only tensor ([B]) is dims [1] reshaped to a scalar per item: the plan's tensor is [B].
        for g, w in zip(config.input, spec.inputs):
            assert g.HasField("reshape") == (len(w.shape) == 1), (name, g.name)
        params = {k: v.string_value for k, v in config.parameters.items()}
        assert params == {"engine": "tensorrt", "precision": "fp16" if name.startswith("transformer") else "fp32"}
    # The VAE cache tensors pair up: step's cache_in_i is first/step's cache_out_i.
    assert [t.name for t in step.inputs[1:]] == [f"cache_in_{i}" for i in range(len(layout))]
    assert [t.name for t in first.outputs[1:]] == [f"cache_out_{i}" for i in range(len(layout))]


# --------------------------------------------------------------------------------------------- FP16 expert graph


@pytest.fixture(scope="module")
def expert(tiny_checkpoint, info, tmp_path_factory):
    """(torch FP32 expert, its declaration, FP32 ONNX path, FP16 ONNX path, conversion report)."""
    from export.onnx_export import export_transformer, load_transformer

    out = tmp_path_factory.mktemp("expert")
    model = load_transformer(tiny_checkpoint / "transformer")
    spec = transformer_spec(info, TRANSFORMER_HIGH_NOISE)
    fp32 = export_transformer(model, spec, out / "fp32" / "model.onnx")
    fp16 = out / "fp16" / "model.fp16.onnx"
    report = op.convert_to_low_precision(fp32, fp16, "fp16")
    return model, spec, fp32, fp16, report


def _torch_reference(model, inputs):
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(inputs["hidden_states"]), torch.from_numpy(inputs["timestep"]),
                    torch.from_numpy(inputs["encoder_hidden_states"]), return_dict=False)[0]
    return out.float().numpy()


@pytest.mark.parametrize("sizes", SHAPES, ids=lambda s: "x".join(str(v) for v in s.values()))
@pytest.mark.slow
def test_fp16_expert_matches_fp32_torch(expert, sizes):
    import onnxruntime as ort

    model, spec, fp32, fp16, _ = expert
    inputs = spec.sample_inputs(sizes, seed=1)
    reference = _torch_reference(model, inputs)
    scale = float(np.abs(reference).max())
    outputs = {}
    for name, path in (("fp32", fp32), ("fp16", fp16)):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.type for i in session.get_inputs()] == ["tensor(float)"] * 3  # the Triton contract is unchanged
        assert session.get_outputs()[0].type == "tensor(float)"
        outputs[name] = session.run(["noise_pred"], inputs)[0]
        assert outputs[name].shape == reference.shape
    err32 = float(np.abs(outputs["fp32"] - reference).max()) / scale
    err16 = float(np.abs(outputs["fp16"] - reference).max()) / scale
    assert err32 < FP32_ONNX_TOLERANCE, err32
    assert err16 < FP16_TOLERANCE, err16
    assert err16 > 10 * err32  # it really computes in FP16


def _attr(node: onnx.NodeProto, name: str) -> int:
    return next(a.i for a in node.attribute if a.name == name)


@pytest.mark.slow
def test_fp16_expert_precision_layout(expert):
    _, _, fp32, fp16, report = expert
    model = onnx.load(str(fp16), load_external_data=False)
    graph = model.graph
    types = op.tensor_types(onnx.shape_inference.infer_shapes(model))
    producer = {o: n for n in graph.node for o in n.output}

    def out_type(node: onnx.NodeProto) -> int:
        return types[node.output[0]]

    by_op: dict[str, set[int]] = {}
    for node in graph.node:
        by_op.setdefault(node.op_type, set()).add(out_type(node))
    F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    # Norms, their statistics, the time path (Sin/Cos, time MLP Gemms) FP32; attention and FFN GEMMs, Conv FP16.
    assert by_op["LayerNormalization"] == {F32}
    assert by_op["ReduceMean"] == {F32} and by_op["Sqrt"] == {F32}
    assert by_op["Sin"] == by_op["Cos"] == {F32}
    assert by_op["Gemm"] == {F32}  # the tiny expert's only Gemms are the time embedding / projection
    assert by_op["MatMul"] == {F16} and by_op["Softmax"] == {F16} and by_op["Conv"] == {F16}
    assert set(report.fp32_nodes_by_rule) == set(op.FP32_RULES)
    # No FP32 -> FP16 -> FP32 round trips (what onnxconverter_common's block list does to neighbouring FP32 nodes).
    for node in graph.node:
        if node.op_type == "Cast" and node.input[0] in producer and producer[node.input[0]].op_type == "Cast":
            pytest.fail(f"Cast after Cast: {producer[node.input[0]].name} -> {node.name}")
    # The timestep reaches the sinusoidal embedding in FP32, never through an FP16 Cast.
    for node in graph.node:
        if "timestep" in node.input:
            assert node.op_type != "Cast" or _attr(node, "to") == F32, node.name
    # Weights: every MatMul weight is FP16, the FP32 ones are few and small.
    inits = {i.name: i for i in graph.initializer}
    matmul_weights = [inits[t] for n in graph.node if n.op_type == "MatMul" for t in n.input if t in inits]
    assert matmul_weights and all(w.data_type == F16 for w in matmul_weights)
    assert report.bytes_out < 0.9 * report.bytes_in
    fp32_weights = sum(int(next(e.value for e in i.external_data if e.key == "length")) if i.external_data
                       else len(i.raw_data) for i in graph.initializer if i.data_type == F32)
    assert report.fp32_weight_bytes == fp32_weights > 0
    assert op.graph_precision(fp16) == "fp16" and op.graph_precision(fp32) == "fp32"
    # One external data file, next to the graph.
    locations = {e.value for i in graph.initializer for e in i.external_data if e.key == "location"}
    assert locations == {fp16.name + ".data"}


@pytest.mark.slow
def test_bf16_expert_is_type_consistent(expert, tmp_path):
    _, _, fp32, _, _ = expert
    out = tmp_path / "model.bf16.onnx"
    report = op.convert_to_low_precision(fp32, out, "bf16")  # runs onnx's strict type check itself
    model = onnx.load(str(out), load_external_data=False)
    kinds = {i.data_type for i in model.graph.initializer}
    assert onnx.TensorProto.BFLOAT16 in kinds and onnx.TensorProto.FLOAT16 not in kinds
    assert report.initializers_converted > 0 and op.graph_precision(out) == "bf16"
    # ONNX Conv has no bfloat16 before opset 22: the patch embedding stays FP32 rather than making an invalid graph.
    assert report.fp32_nodes_by_rule.get(op.NO_LOW_PRECISION_SCHEMA) == 1 and report.fp32_ops.get("Conv") == 1


def test_bf16_rounding():
    values = np.array([1.0, -2.5, 3.14159265, 1e-20, 65504.0, 1e30, np.inf, -np.inf], dtype=np.float32)
    raw, clamped = op._to_low(values, onnx.TensorProto.BFLOAT16)
    back = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    assert clamped == 0
    np.testing.assert_allclose(back, values, rtol=2 ** -8)
    assert np.isnan((np.frombuffer(op._to_low(np.array([np.nan], np.float32), onnx.TensorProto.BFLOAT16)[0],
                                   dtype="<u2").astype(np.uint32) << 16).view(np.float32)).all()
    raw, clamped = op._to_low(np.array([1e5, -7e4, 1.0, np.inf], np.float32), onnx.TensorProto.FLOAT16)
    assert clamped == 2 and list(np.frombuffer(raw, "<f2")) == [65504.0, -65504.0, 1.0, np.inf]


@pytest.mark.slow
def test_build_engine_refuses_a_graph_of_another_precision(expert, tmp_path):
    _, spec, fp32, _, _ = expert
    with pytest.raises(ValueError, match="is a fp32 graph, asked for fp16"):
        TensorRTEngine(tmp_path / "model.plan").build(fp32, spec, [], "fp16")


@pytest.mark.slow
def test_repository_build_reaches_the_builder(expert, info, layout, tmp_path):
    """Without TensorRT: the repository walk finds the ONNX expert, converts it to FP16 in the work dir, and stops at
    the builder with a message saying where plans are built."""
    if tensorrt_available():
        pytest.skip("TensorRT is importable: test_tiny_plans_build_and_run covers the whole build")
    from wan22_triton.engines.vae_frames import save_cache_layout

    _, _, fp32, _, _ = expert
    repo = tmp_path / "repo"
    version = repo / TRANSFORMER_HIGH_NOISE / "1"
    version.mkdir(parents=True)
    for f in (fp32, fp32.with_name(fp32.name + ".data")):
        shutil.copy(f, version / f.name)
    (repo / VAE_DECODER / "1").mkdir(parents=True)
    save_cache_layout(layout, repo / VAE_DECODER / "1")
    with pytest.raises(RuntimeError, match="docker/Dockerfile.export"):
        tb.build_repository_engines(repo, info, precision="fp16", work_dir=tmp_path / "work", log=lambda _: None)
    converted = tmp_path / "work" / TRANSFORMER_HIGH_NOISE / "model.fp16.onnx"
    assert op.graph_precision(converted) == "fp16"
    assert (version / "model.onnx").is_file()  # nothing removed before a plan exists


# --------------------------------------------------------------------------------------------- real TensorRT


def _tensorrt_gpu() -> str | None:
    """Why the TensorRT tests cannot run here, or None when they can."""
    if not tensorrt_available():
        return ("TensorRT's Python package is not importable (only tensorrt-stubs is installed); these tests run "
                "inside docker/Dockerfile.export on a GPU")
    import torch

    if not torch.cuda.is_available():
        return "TensorRT is importable but torch sees no CUDA GPU"
    return None


requires_tensorrt = pytest.mark.skipif(_tensorrt_gpu() is not None, reason=str(_tensorrt_gpu()))
TINY_SHAPES = ShapeSpec(num_frames=(5,), resolutions=((32, 48), (64, 32)), max_batch=2)


@requires_tensorrt
def test_tiny_plans_build_and_run(tiny_checkpoint, info, tmp_path):
    import torch

    from export.repository import ExportOptions, export_repository
    from wan22_triton.engines.vae_frames import decode_with_frame_graphs, torch_runners

    repo = tmp_path / "repo"
    export_repository(tiny_checkpoint, repo, ExportOptions(engine="onnx"), log=lambda _: None)
    built = tb.build_repository_engines(repo, info, precision="fp16", shape_spec=TINY_SHAPES,
                                        work_dir=tmp_path / "work", log=lambda _: None)
    assert set(built) == {"transformer_high_noise", "transformer_low_noise", "vae_decoder_first_frame",
                          "vae_decoder_step"}
    for name, meta in built.items():
        plan = repo / name / "1" / "model.plan"
        assert plan.is_file() and json.loads(TensorRTEngine(plan).info_path.read_text()) == meta
        assert meta["tensorrt_version"] and meta["strongly_typed"] and meta["build_seconds"] > 0
        assert meta["precision"] == ("fp16" if name.startswith("transformer") else "fp32")
        assert len(meta["profiles"]) == 2
        assert text_format.Parse((repo / name / "config.pbtxt").read_text(), mc.ModelConfig()).platform == "tensorrt_plan"
    assert not (repo / "transformer_high_noise" / "1" / "model.onnx").exists()
    assert (tmp_path / "work" / "timing.cache").stat().st_size > 0

    # Each plan deserialized once; the expert loop below switches between its two profiles.
    engines = {name: TensorRTEngine(repo / name / "1" / "model.plan").load() for name in built}

    # Experts: the FP16 plan vs the FP32 PyTorch expert, at both profile shapes and both batch sizes.
    from export.onnx_export import load_transformer, load_vae

    for folder, name in EXPERT_MODELS.items():
        model = load_transformer(tiny_checkpoint / folder)
        spec = transformer_spec(info, name)
        for (h, w), batch in (((32, 48), 2), ((64, 32), 1)):
            _, frames, lh, lw = info.latent_shape(5, h, w)
            inputs = spec.sample_inputs({"batch": batch, "latent_frames": frames, "latent_height": lh,
                                         "latent_width": lw}, seed=2)
            got = engines[name].run(inputs)["noise_pred"]
            reference = _torch_reference(model, inputs)
            assert float(np.abs(got - reference).max()) / float(np.abs(reference).max()) < 2 * FP16_TOLERANCE

    # VAE: the two FP32 plans driven like the vae_decoder BLS loop vs the same loop over the torch modules.
    from wan22_triton.engines.vae_frames import load_cache_layout, named_runners

    vae = load_vae(tiny_checkpoint / "vae")
    layout = load_cache_layout(repo / "vae_decoder" / "1")
    first_spec, step_spec = vae_decoder_frame_specs(info, layout)
    run_first, run_step = named_runners(engines[first_spec.name].run, engines[step_spec.name].run,
                                        first_spec, step_spec)
    latents = np.random.default_rng(3).standard_normal((1, info.z_dim, 3, 8, 4)).astype(np.float32)
    got = decode_with_frame_graphs(run_first, run_step, latents)
    reference = decode_with_frame_graphs(*torch_runners(vae, layout), torch.from_numpy(latents)).numpy()
    assert got.shape == reference.shape
    assert float(np.abs(got - reference).max()) < 1e-2  # TF32 convolutions, output in [-1, 1]


def test_converter_handles_constants_casts_and_shared_weights(tmp_path):
    """A hand-made graph with what the tiny expert lacks: a float Constant, a Cast int->float, an initializer shared by
    an FP32 and an FP16 node, a low-precision graph output; FP16 result vs FP32 in onnxruntime."""
    import onnxruntime as ort
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(np.ones(4, np.float32), "scale")]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul"),                       # fp16
        helper.make_node("Constant", [], ["c"], name="const",
                         value=numpy_helper.from_array(np.full(4, 0.5, np.float32))),     # follows its consumer
        helper.make_node("Add", ["y", "c"], ["y1"], name="add_const"),                       # fp16
        helper.make_node("Add", ["y1", "b"], ["y2"], name="add_bias"),                       # fp16, b shared
        helper.make_node("LayerNormalization", ["y2", "scale", "b"], ["n"], name="ln"),      # fp32, b shared
        helper.make_node("Cast", ["k"], ["k_f"], name="cast", to=TP.FLOAT),                 # int -> float
        helper.make_node("Mul", ["n", "n"], ["sq"], name="square"),                          # fp32 (propagated)
        helper.make_node("MatMul", ["sq", "W"], ["p"], name="matmul2"),                      # fp16
        helper.make_node("Div", ["p", "k_f"], ["out"], name="div"),                          # fp16 -> graph output
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, ["n", 4]),
                                           helper.make_tensor_value_info("k", TP.INT64, [1])],
                              [helper.make_tensor_value_info("out", TP.FLOAT, ["n", 4])], initializer=inits)
    src = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src))
    report = op.convert_to_low_precision(src, tmp_path / "g16.onnx", "fp16", fp32_inputs=())
    assert report.fp32_nodes_by_rule == {"layer_norm": 1, "propagated": 1}
    x = rng.standard_normal((3, 4)).astype(np.float32)
    feeds = {"x": x, "k": np.array([3], np.int64)}
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    session = ort.InferenceSession(str(tmp_path / "g16.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].type == "tensor(float)"
    got = session.run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=5e-3, atol=5e-3 * float(np.abs(want).max()))
    converted = onnx.load(str(tmp_path / "g16.onnx"), load_external_data=False)
    cast = next(n for n in converted.graph.node if n.name == "cast")
    assert _attr(cast, "to") == TP.FLOAT16  # the int->float Cast feeds only FP16 nodes: it now casts to FP16
    const = next(n for n in converted.graph.node if n.name == "const")
    assert const.attribute[0].t.data_type == TP.FLOAT16
    kinds = {i.name: i.data_type for i in converted.graph.initializer}
    assert kinds == {"W": TP.FLOAT16, "b": TP.FLOAT, "scale": TP.FLOAT}  # b also feeds the FP32 LayerNorm
