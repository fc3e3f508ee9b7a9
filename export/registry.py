"""The served models as the export makes them: each component module (wan22_triton.components) lists its
`Component`s from an `ExportPlan`; `repository_components` loops over the modules.

The plan holds what several components share (the checkpoint, the options, where replicas go, the compile and
warm-up points, the manifest's common fields) and the artifact writers they choose from per engine, so that the
component modules never import export code.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from wan22_triton.checkpoint import CheckpointInfo
from wan22_triton.components import expert, orchestrator, text_encoder, vae_decoder, vae_encoder
from wan22_triton.components.common import ArtifactWriter, CacheEntry, CompilePoint, Component, ComponentSpec
from wan22_triton.engines.onnx_runner import ONNX_GRAPH
from wan22_triton.engines.random_weights import component_seed
from wan22_triton.manifest import Manifest
from wan22_triton.memory.budget import MemoryModel, served_size
from wan22_triton.options import Device, Engine

from .compile_artifacts import compile_points, compile_writer
from .loras import expert_lora_writer
from .memory import memory_model
from .options import ExportOptions

COMPONENT_MODULES = (text_encoder, expert, vae_encoder, vae_decoder, orchestrator)  # in the order they must be written


def repository_components(info: CheckpointInfo, opts: ExportOptions, repository: Path,
                          log: Callable[[str], None] = print) -> list[Component]:
    """Every model of the repository for this checkpoint and these options, in the order they must be written."""
    plan = ExportPlan(info, opts, Path(repository), log)
    return [component for module in COMPONENT_MODULES for component in module.export_components(plan)]


@dataclass
class ExportPlan:
    info: CheckpointInfo
    opts: ExportOptions
    repository: Path
    log: Callable[[str], None] = print

    @cached_property
    def warm_points(self) -> tuple[CompilePoint, ...]:
        """With a warm-up the server is READY only at full speed: every model's first call runs in its warm-up (the
        experts' compiles and first kernels, the VAE's cuDNN autotuning per size, the text encoder's first kernels)."""
        return compile_points(self.opts) if self.opts.warms_up else ()

    @property
    def compile_points(self) -> tuple[CompilePoint, ...]:
        """The experts' compile points (torch engine with compile: options.check): the warm-up's, which artifacts
        imply."""
        return self.warm_points if self.opts.compile_artifacts else ()

    @property
    def gpu_inputs(self) -> bool:
        return self.opts.engine == Engine.TORCH and self.opts.device == Device.GPU

    @property
    def pipeline_devices(self) -> tuple[int, ...]:
        """The orchestrator's: one per replica."""
        return tuple(self.opts.parallel.pipeline_devices())

    def per_replica(self, expert: bool = False) -> dict[str, Any]:
        """The text encoder, experts and VAE: a version per replica, each on its replica's devices."""
        plan = self.opts.parallel
        return dict(versions=plan.replicas, devices=tuple(plan.replica_devices(0, expert=expert)))

    @property
    def loras(self) -> tuple[str, ...]:
        return tuple(source.name for source in self.opts.lora)

    @cached_property
    def video_sizes(self) -> tuple[tuple[int, int, int], ...] | None:
        """(frames, height, width) the TensorRT profiles or the compile points cover; None: any size."""
        if self.opts.engine != Engine.TENSORRT and not self.opts.compile_artifacts:
            return None
        from .tensorrt_build import load_shape_spec

        spec = load_shape_spec(self.opts.shape_spec)
        return tuple((f, h, w) for f in spec.num_frames for (h, w) in spec.resolutions)

    @cached_property
    def memory(self) -> MemoryModel | None:
        """GPU repositories of the torch engine: what the models hold on the fullest GPU (checked at load)."""
        memory = memory_model(self.info, self.opts)
        if memory is not None:
            need = memory.need(self.info, served_size(self.info, self.video_sizes))
            self.log(f"  GPU memory: ~{need.describe()} for {need.label} (the largest size served at load; each "
                     "request's size is checked too)")
        return memory

    def manifest(self, name: str, folder: str | None = None, **fields: Any) -> Manifest:
        """A model's manifest; `folder`: its checkpoint sub-folder (the benchmark seam's seed)."""
        opts, seed = self.opts, self.opts.random_weights_seed
        return Manifest(
            model=name, engine=opts.engine, precision=opts.precision, checkpoint=self.info, low_memory=opts.low_memory,
            release_workspace=opts.release_workspace, limits=opts.limits, parallel=opts.parallel, memory=self.memory,
            random_weights_seed=component_seed(seed, folder) if seed is not None and folder else None, **fields,
        )

    def cache_layout(self, vae_version: Path) -> list[CacheEntry]:
        from wan22_triton.engines.vae_frames import load_cache_layout

        return load_cache_layout(vae_version)

    # ---------------------------------------------------------------------------------------- artifact writers

    def copy_folders(self, *folders: tuple[str, str]) -> ArtifactWriter:
        """Checkpoint sub-folders copied into the version folder under the given names (weights as safetensors)."""
        root = Path(self.info.path)

        def write(version: Path) -> None:
            for src, name in folders:
                shutil.copytree(root / src, version / name,
                                ignore=shutil.ignore_patterns("*.bin", "*.pt", "*.pth", "*.ckpt"))

        return write

    @staticmethod
    def both(*writers: ArtifactWriter) -> ArtifactWriter:
        def write(version: Path) -> None:
            for writer in writers:
                writer(version)

        return write

    def onnx_expert(self, folder: str, spec: ComponentSpec) -> ArtifactWriter:
        """One expert's ONNX graph from the checkpoint sub-folder `folder`."""
        def write(version: Path) -> None:
            from .onnx_export import export_transformer, load_transformer

            export_transformer(load_transformer(Path(self.info.path) / folder), spec, version / ONNX_GRAPH)

        return write

    def onnx_vae_frames(self, folder: str) -> ArtifactWriter:
        """The VAE decoder's two frame graphs and their cache layout, into the `vae_decoder` version folder."""
        def write(version: Path) -> None:
            from .onnx_export import export_vae_decoder_frames, load_vae

            export_vae_decoder_frames(load_vae(Path(self.info.path) / folder), self.info, version)

        return write

    @staticmethod
    def move_graph(src: Path) -> ArtifactWriter:
        """A frame graph exported beside `vae_decoder` moved into its own model (external data keeps its name)."""
        def write(version: Path) -> None:
            data = src.with_name(src.name + ".data")
            src.rename(version / ONNX_GRAPH)
            if data.exists():
                data.rename(version / data.name)

        return write

    def lora_writer(self, expert_index: int) -> ArtifactWriter:
        return expert_lora_writer(self.opts.lora, expert_index)

    def compile_writer(self, manifest: Manifest) -> ArtifactWriter:
        return compile_writer(manifest, self.opts.device, self.log)
