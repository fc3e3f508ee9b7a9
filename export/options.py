"""What a user chooses at export (`python -m export` flags), checked before anything is written."""

from __future__ import annotations

from dataclasses import dataclass, field

from wan22_triton.checkpoint import CheckpointInfo, Family
from wan22_triton.manifest import Limits
from wan22_triton.options import Device, Engine, Precision, SpeedOptions, check_choices
from wan22_triton.parallel.plan import ParallelPlan

from .loras import LoraSource


@dataclass(frozen=True)
class ExportOptions:
    engine: Engine = Engine.TORCH
    device: Device = Device.CPU  # where the component models run
    precision: Precision = Precision.FP32  # torch engine: fp32 on CPU; bf16/fp16 on GPU
    limits: Limits = field(default_factory=Limits)
    orchestrator_instances: int = 1
    max_queue_seconds: int = 0  # 0: no limit; else requests waiting longer are rejected (Triton's queue policy)
    # requests waiting per orchestrator model past those running; more are refused at once (UNAVAILABLE); 0: no bound
    max_queue_size: int = 8
    shape_spec: str | None = None  # JSON of the video sizes: TensorRT profiles, or the compile points below
    # ENGINE=torch: experts and text encoder keep their weights in host memory, on the GPU only while they work
    low_memory: bool = False
    # ENGINE=torch: keep each model's PyTorch GPU cache when it goes idle (never handed back); by default the cache's
    # unused blocks are released then (the manifest's `release_workspace`)
    keep_workspace: bool = False
    # ENGINE=torch: the text encoder alone as in low_memory (its weights in page-locked host memory, on the GPU only
    # while it encodes): ~11 GB less on the GPU for A14B's UMT5-XXL, one copy a request (0.21 s on an H200)
    text_encoder_offload: bool = False
    speed: SpeedOptions = field(default_factory=SpeedOptions)  # ENGINE=torch experts (wan22_triton.speed.fast_path)
    # With compile regional: the experts compiled here for every size of `shape_spec` (on a GPU of the serving kind
    # for device gpu), torch's compile cache saved beside them, warmed up before READY (docs/compile_artifacts.md)
    compile_artifacts: bool = False
    # ENGINE=torch, eager experts: Triton's model_warmup for the text encoder, the experts and the VAE, one sample per
    # `shape_spec` size (and expert batch), so that READY comes after every first call; compile_artifacts implies
    # it for compiled experts. Other sizes are still served (only compile_artifacts and TensorRT restrict them).
    warmup: bool = False
    parallel: ParallelPlan = field(default_factory=ParallelPlan)  # several devices (wan22_triton.parallel.plan)
    # Benchmark seam (wan22_triton.engines.random_weights): components from their configs with weights from this base seed.
    random_weights_seed: int | None = None
    vae_cudnn_benchmark: bool = False
    # `--lora NAME=FILE` or `NAME=HIGH,LOW`, repeatable: adapters requests choose by name (export/loras.py)
    lora: tuple[LoraSource, ...] = ()

    @property
    def warms_up(self) -> bool:
        """Whether the models get model_warmup samples from the shape spec."""
        return self.warmup or self.compile_artifacts

    @property
    def release_workspace(self) -> bool:
        """What the models' manifests say: the torch engine's models release their workspace unless kept (on a CPU
        the release runs but has nothing to free)."""
        return self.engine == Engine.TORCH and not self.keep_workspace

    def check(self) -> None:
        """ValueError naming the first choice that cannot be served (the rules: options.check_choices)."""
        for source in self.lora:
            source.check()
        for name, value in (("max_queue_seconds", self.max_queue_seconds), ("max_queue_size", self.max_queue_size)):
            if value < 0:
                raise ValueError(f"--{name.replace('_', '-')} is {value}; give 0 (no bound) or more")
        check_choices(self.engine, self.device, self.precision, self.speed, low_memory=self.low_memory,
                      keep_workspace=self.keep_workspace, text_encoder_offload=self.text_encoder_offload,
                      ulysses=self.parallel.ulysses, parallel=self.parallel.active, loras=bool(self.lora),
                      warmup=self.warmup, compile_artifacts=self.compile_artifacts)
        if self.compile_artifacts and self.device == Device.GPU:
            import torch

            if not torch.cuda.is_available():
                raise ValueError("--compile-artifacts with --device gpu compiles on this machine's GPU, which must be "
                                 "of the serving kind (same GPU, torch, CUDA, Triton); no CUDA GPU is visible")

    def check_checkpoint(self, info: CheckpointInfo) -> None:
        """ValueError naming a choice this checkpoint's family cannot be served with (yet), and what to choose."""
        self.parallel.check(info)
        if info.family == Family.TI2V_5B and self.engine != Engine.TORCH:
            raise ValueError(f"--engine {self.engine}: the ONNX and TensorRT engines' VAE frame graphs do not cover the "
                             "Wan2.2 VAE of TI2V-5B yet; export it with --engine torch")
        if info.takes_image and self.engine != Engine.TORCH:
            raise ValueError(f"--engine {self.engine}: the VAE encoder an image needs is served by the torch engine "
                             f"only; export {info.family} with --engine torch")
