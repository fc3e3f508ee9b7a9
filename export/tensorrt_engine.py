"""One TensorRT 10 plan: build it from an ONNX graph, load it once, run it (`TensorRTEngine`).

Shaped after the `Engine` of NVIDIA's TensorRT demo/Diffusion, without refit and CUDA graphs. A plan only loads on
the TensorRT version and GPU architecture it was built with, so `build` writes next to `model.plan` a
`model.plan.json` saying how it was built (TensorRT version, GPU, precision, profiles, build seconds).

Networks are STRONGLY TYPED (`NetworkDefinitionCreationFlag.STRONGLY_TYPED`): every tensor has the type the ONNX
graph gives it and TensorRT never picks another, so a plan's precision is exactly the graph's (`export.onnx_precision`
makes and checks it on the CPU). The weakly typed alternative (`BuilderFlag.FP16` + per-layer
`precision`/`set_output_type` + `OBEY_PRECISION_CONSTRAINTS`) is rejected: those flags are deprecated since TensorRT
10.12 in favour of strong typing, layer constraints must be matched to TensorRT layer names after the parser (fragile
across fusions and versions), and with FP16 allowed everywhere TensorRT may still run in FP16 any unconstrained layer
the FP32 islands feed.

`tensorrt` is imported lazily: this module imports, and type-checks against `tensorrt-stubs`, without TensorRT.
"""

from __future__ import annotations

import json
import subprocess
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from wan22_triton.components.common import ComponentSpec
from wan22_triton.options import Precision, parse

from .onnx_precision import graph_precision

if TYPE_CHECKING:
    import tensorrt as trt
    import torch

PLAN_FILE = "model.plan"
PLAN_INFO_SUFFIX = ".json"  # model.plan -> model.plan.json
DEFAULT_WORKSPACE_BYTES = 16 << 30

Ranges = Mapping[str, tuple[int, int, int]]
Log = Callable[[str], None]


def tensorrt_available() -> bool:
    """Whether the real TensorRT is importable. (tensorrt-stubs alone installs a `tensorrt/` directory of .pyi files,
    which imports as an empty namespace package.)"""
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")


def _require_tensorrt() -> None:
    if not tensorrt_available():  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "TensorRT's Python package is not importable here; build the plans inside docker/Dockerfile.export "
            "(the NGC image ships the TensorRT version Triton's tensorrt_plan backend loads)"
        )


@lru_cache(maxsize=1)
def _logger() -> trt.ILogger:
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def gpu_name() -> str | None:
    """Name of GPU 0: via torch when it sees CUDA, else nvidia-smi, else None."""
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=30, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _trt_dtype_name(dtype: trt.DataType) -> str:
    import tensorrt as trt

    names = {trt.DataType.FLOAT: "float32", trt.DataType.HALF: "float16", trt.DataType.BF16: "bfloat16",
             trt.DataType.INT32: "int32", trt.DataType.INT64: "int64", trt.DataType.UINT8: "uint8",
             trt.DataType.BOOL: "bool", trt.DataType.INT8: "int8"}
    return names.get(dtype, str(dtype))


def _check_network(network: trt.INetworkDefinition, spec: ComponentSpec) -> None:
    """The parsed network's I/O names, dtypes and ranks must be the declaration's (Triton matches them by name)."""
    declared = {t.name: t for t in (*spec.inputs, *spec.outputs)}
    found = [network.get_input(i) for i in range(network.num_inputs)]
    found += [network.get_output(i) for i in range(network.num_outputs)]
    names = [t.name for t in found]
    if sorted(names) != sorted(declared):
        raise RuntimeError(f"{spec.name}: network I/O {names} differ from the declaration {sorted(declared)}")
    for tensor in found:
        want = declared[tensor.name]
        dtype = _trt_dtype_name(tensor.dtype)
        if dtype != want.dtype or len(tensor.shape) != len(want.shape):
            shape = [tensor.shape[i] for i in range(len(tensor.shape))]
            raise RuntimeError(f"{spec.name}: {tensor.name} is {dtype}{shape}, declared "
                               f"{want.dtype} of rank {len(want.shape)}")


class TensorRTEngine:
    """The plan at `plan_path`: `build` writes it (and its info), `load` deserializes it once and keeps the runtime,
    engine and execution context, `run` executes it on GPU 0 (tests and smoke checks; Triton does this when
    serving)."""

    def __init__(self, plan_path: str | Path) -> None:
        self.plan_path = Path(plan_path)
        self.runtime: trt.Runtime | None = None
        self.engine: trt.ICudaEngine | None = None
        self.context: trt.IExecutionContext | None = None
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self._profile: int | None = None  # the context's optimization profile
        self._stream: torch.cuda.Stream | None = None

    @property
    def info_path(self) -> Path:
        """`model.plan.json`: how the plan was built."""
        return self.plan_path.with_name(self.plan_path.name + PLAN_INFO_SUFFIX)

    def build(self, onnx_path: str | Path, spec: ComponentSpec, ranges: Ranges | Sequence[Ranges], precision: Precision,
              timing_cache_path: str | Path | None = None, *, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
              optimization_level: int = 3, tf32: bool = True, extra_info: Mapping[str, Any] | None = None,
              log: Log = print) -> dict[str, Any]:
        """Build the plan from `onnx_path` (external data next to it): strongly typed, one optimization profile per
        entry of `ranges` (symbol -> (min, opt, max), see `export.tensorrt_build.profile_ranges`), timing cache read
        from and written back to `timing_cache_path`. Writes `info_path` and returns its content.

        `precision` is not a builder switch (the network is strongly typed): it must be the graph's own precision and
        is checked against it, so an FP32 graph is never shipped as "fp16" by mistake.
        """
        precision = parse(Precision, precision)
        onnx_path, plan_path = Path(onnx_path), self.plan_path
        actual = graph_precision(onnx_path)
        if actual != precision:
            raise ValueError(f"{onnx_path} is a {actual} graph, asked for {precision}: a strongly typed network runs "
                             "in the graph's types (convert it with convert_to_low_precision first)")
        profiles = [dict(ranges)] if isinstance(ranges, Mapping) else [dict(r) for r in ranges]
        if not profiles:
            raise ValueError(f"{spec.name}: no optimization profile")
        _require_tensorrt()
        import tensorrt as trt

        self.unload()  # a loaded engine would be the old plan
        start = time.perf_counter()

        logger = _logger()
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):  # by path: external data is found next to the graph
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n" + "\n".join(errors))
        _check_network(network, spec)

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
        config.builder_optimization_level = optimization_level
        if not tf32:
            config.clear_flag(trt.BuilderFlag.TF32)
        shapes: list[dict[str, dict[str, list[int]]]] = []
        for ranges_i in profiles:
            profile = builder.create_optimization_profile()
            described: dict[str, dict[str, list[int]]] = {}
            for name, (lo, opt, hi) in spec.profile(ranges_i).items():
                profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
                described[name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
            if config.add_optimization_profile(profile) < 0:
                raise RuntimeError(f"{spec.name}: invalid optimization profile {described}")
            shapes.append(described)

        cache_path = Path(timing_cache_path) if timing_cache_path else None
        cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
        cache = config.create_timing_cache(cache_bytes)
        if not config.set_timing_cache(cache, ignore_mismatch=False):  # from another GPU or TensorRT version
            log(f"  {spec.name}: timing cache {cache_path} does not match this GPU/TensorRT, starting a new one")
            cache_bytes = b""
            config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)

        log(f"  {spec.name}: building {precision} plan, {len(profiles)} profile(s)")
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build {spec.name} from {onnx_path} (see the log above)")
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        with open(plan_path, "wb") as f:
            f.write(serialized)
        if cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            with open(cache_path, "wb") as f:
                f.write(config.get_timing_cache().serialize())

        info: dict[str, Any] = {
            "model": spec.name,
            "tensorrt_version": trt.__version__,
            "gpu": gpu_name(),
            "precision": precision,
            "strongly_typed": True,
            "tf32": tf32,
            "onnx": onnx_path.name,
            "profiles": shapes,
            "workspace_bytes": workspace_bytes,
            "builder_optimization_level": optimization_level,
            "timing_cache": str(cache_path) if cache_path is not None else None,
            "timing_cache_hit": bool(cache_bytes),
            "plan_bytes": plan_path.stat().st_size,
            "build_seconds": round(time.perf_counter() - start, 1),
            **(extra_info or {}),
        }
        self.info_path.write_text(json.dumps(info, indent=2) + "\n")
        log(f"  {spec.name}: {info['plan_bytes'] / 1e6:.1f} MB plan in {info['build_seconds']}s")
        return info

    def load(self) -> TensorRTEngine:
        """Deserialize the plan and create its execution context; a no-op once loaded."""
        if self.context is not None:
            return self
        _require_tensorrt()
        import tensorrt as trt

        runtime = trt.Runtime(_logger())
        engine = runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {self.plan_path} "
                               "(built with another TensorRT version?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.runtime, self.engine, self.context = runtime, engine, engine.create_execution_context()
        self._profile = None
        return self

    def unload(self) -> None:
        """Drop the context, engine and runtime (in that order: each must go before the one that made it)."""
        self.context = None
        self.engine = None
        self.runtime = None
        self._profile = None

    def profile_for(self, shapes: Mapping[str, Sequence[int]]) -> int:
        """The first optimization profile whose ranges contain the input shapes."""
        engine = self.load().engine
        assert engine is not None

        def fits(profile: int) -> bool:
            for name in self.input_names:
                lo, _, hi = engine.get_tensor_profile_shape(name, profile)
                shape = shapes[name]
                if len(shape) != len(lo) or any(not lo[i] <= shape[i] <= hi[i] for i in range(len(shape))):
                    return False
            return True

        profile = next((p for p in range(engine.num_optimization_profiles) if fits(p)), None)
        if profile is None:
            raise ValueError(f"{self.plan_path}: input shapes {dict(shapes)} fit no profile")
        return profile

    def run(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        """Inputs (numpy, any float/int type: cast to the plan's) -> outputs as float32 numpy arrays. Loads the plan
        on first use and switches the context's optimization profile only when the shapes need another one."""
        self.load()
        profile = self.profile_for({name: inputs[name].shape for name in self.input_names})
        import tensorrt as trt
        import torch

        engine, context = self.engine, self.context
        assert engine is not None and context is not None
        torch_types = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                       trt.DataType.BF16: torch.bfloat16, trt.DataType.INT32: torch.int32,
                       trt.DataType.INT64: torch.int64}
        if self._stream is None:
            self._stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        stream = self._stream
        if profile != self._profile:
            context.set_optimization_profile_async(profile, stream.cuda_stream)
            self._profile = profile
        buffers: dict[str, torch.Tensor] = {}
        for name in self.input_names:
            tensor = torch.from_numpy(np.ascontiguousarray(inputs[name])).to(
                "cuda", torch_types[engine.get_tensor_dtype(name)])
            buffers[name] = tensor
            context.set_input_shape(name, trt.Dims(list(tensor.shape)))
            context.set_tensor_address(name, tensor.data_ptr())
        for name in self.output_names:
            shape = tuple(context.get_tensor_shape(name)[i] for i in range(len(context.get_tensor_shape(name))))
            buffers[name] = torch.empty(shape, dtype=torch_types[engine.get_tensor_dtype(name)], device="cuda")
            context.set_tensor_address(name, buffers[name].data_ptr())
        stream.wait_stream(torch.cuda.current_stream())  # the buffers were filled on the current stream
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.plan_path}: execution failed")
        stream.synchronize()
        return {name: buffers[name].float().cpu().numpy() for name in self.output_names}
