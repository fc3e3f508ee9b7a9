"""`--compile-artifacts`: the torch engine's experts compiled at export, one forward per compile point, and torch's
compile cache saved into each expert's version folder (wan22_triton.speed.compile_cache; docs/compile_artifacts.md).

The compile runs where the export runs, so the export machine must be of the serving kind: a GPU repository's
artifacts are made on cuda:0 and only a GPU of the same name and compute capability, with the same torch, CUDA and
Triton, loads them (others compile just in time); a CPU export makes CPU artifacts (what the tests use).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from wan22_triton.speed import compile_cache

from wan22_triton.operations import events
from wan22_triton.components.common import CompilePoint, ShapeSpec
from wan22_triton.components.expert import transformer_spec
from wan22_triton.engines.loading import build_expert, expert_forward, torch_dtype
from wan22_triton.manifest import Manifest
from wan22_triton.options import Device
from wan22_triton.parallel.plan import ParallelPlan

from .options import ExportOptions


def expert_batches(plan: ParallelPlan, spec: ShapeSpec) -> tuple[int, ...]:
    """The batches the orchestrator sends an expert: [cond, uncond] as one batch with CFG, one item without (a
    request with guidance_scale <= 1); with CFG parallel each half goes alone."""
    if plan.cfg_parallel == 2:
        return (1,)
    return tuple(b for b in (2, 1) if b <= spec.max_batch)


def compile_points(opts: ExportOptions) -> tuple[CompilePoint, ...]:
    """Every size of the export's shape spec at every batch the experts will see."""
    from .tensorrt_build import load_shape_spec

    spec = load_shape_spec(opts.shape_spec)
    return spec.compile_points(expert_batches(opts.parallel, spec))


def export_device(device_kind: Device) -> torch.device:
    """Where the export compiles: the first GPU for a GPU repository (ExportOptions.check made sure there is one)."""
    return torch.device("cuda:0" if device_kind == Device.GPU else "cpu")


def compile_writer(manifest: Manifest, device_kind: Device,
                   log: Callable[[str], None] = print) -> Callable[[Path], None]:
    """Writes `compile_cache/` into an expert's version folder whose `transformer/` is already there."""

    def write(version: Path) -> None:
        device, info = export_device(device_kind), manifest.checkpoint
        spec = transformer_spec(info, manifest.model)
        with compile_cache.recording():
            model = build_expert(manifest, version, device, log=log, load_artifacts=False)
            for seed, point in enumerate(manifest.compile_points):
                inputs = spec.sample_inputs(point.sizes(info), seed=seed)
                started = time.perf_counter()
                with torch.inference_mode():  # the first block's graph is every block's (as in the warm-up)
                    expert_forward(model, inputs, device, torch_dtype(manifest.precision), first_block_only=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds = time.perf_counter() - started
                events.emit("export_point_compiled", model=manifest.model, point=point.label, seconds=seconds)
                log(f"  {manifest.model}: compiled {point.label} in {seconds:.1f}s")
            cache = compile_cache.CompileCache.of_expert(manifest, version, device, load=False)
            assert cache is not None  # ExportOptions.check: compile on, and the points come with the option
            cache.save(log)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next expert compiles on the same GPU

    return write
