"""What a user chooses at export (`python -m export` flags), checked before anything is written."""

from __future__ import annotations

from dataclasses import dataclass, field

from wan22_triton.manifest import ENGINES, PRECISIONS, Limits, SpeedOptions
from wan22_triton.parallel.plan import ParallelPlan

from .loras import LoraSource

DEVICES = ("cpu", "gpu")


@dataclass(frozen=True)
class ExportOptions:
    engine: str = "torch"
    device: str = "cpu"  # where the component models run: cpu | gpu
    precision: str = "fp32"  # torch engine: fp32 on CPU; bf16/fp16 on GPU
    limits: Limits = field(default_factory=Limits)
    orchestrator_instances: int = 1
    max_queue_seconds: int = 0  # 0: no limit; else requests waiting longer are rejected (Triton's queue policy)
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
        return self.engine == "torch" and not self.keep_workspace

    def check(self) -> None:
        """ValueError naming the first choice that cannot be served."""
        for name, value, allowed in (("engine", self.engine, ENGINES), ("device", self.device, DEVICES),
                                     ("precision", self.precision, PRECISIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        self.speed.check()
        chosen = self.speed.chosen()
        if chosen and self.engine != "torch":
            raise ValueError(f"{', '.join(chosen)} need engine 'torch', got {self.engine!r}")
        if (self.speed.quantization != "none" or self.speed.attention != "sdpa") and self.device != "gpu":
            raise ValueError("FP8 quantization and the attention kernels need --device gpu")
        if self.keep_workspace and self.engine != "torch":
            raise ValueError(f"keep_workspace needs engine 'torch' (only its models keep a PyTorch cache to release), "
                             f"got {self.engine!r}")
        if self.text_encoder_offload and self.engine != "torch":
            raise ValueError(f"text_encoder_offload needs engine 'torch' (weights the Python model can move), "
                             f"got {self.engine!r}")
        if self.low_memory and self.engine != "torch":
            raise ValueError(f"low_memory needs engine 'torch' (weights the Python model can move), got {self.engine!r}")
        if self.parallel.ulysses > 1 and self.engine != "torch":
            raise ValueError(f"ulysses needs engine 'torch' (its worker processes run the diffusers module), "
                             f"got {self.engine!r}")
        if self.low_memory and self.parallel.active:
            raise ValueError("low_memory swaps weights to fit ONE GPU; with several, use them instead (no parallel "
                             "plan with low_memory)")
        if self.low_memory and self.speed.quantization != "none":
            raise ValueError("low_memory does not support quantization (torchao's FP8 weights are not plain storage)")
        for source in self.lora:
            source.check()
        if self.lora and (self.engine != "torch" or self.low_memory or self.speed.compile != "none"):
            raise ValueError("--lora needs engine 'torch', without --low-memory or --compile (adapters are chosen per "
                             "call: a compiled block would recompile for each adapter and scale; wan22_triton/request/lora.py)")
        if self.lora and self.parallel.ulysses > 1:
            raise ValueError("--lora is not supported with ulysses > 1 yet (the worker processes load no adapters)")
        if self.warmup and (self.engine != "torch" or self.low_memory):
            raise ValueError("--warmup needs engine 'torch' without --low-memory (the warm-up would leave every "
                             "model's weights on the GPU; other engines' warm-up is not tested)")
        if self.warmup and self.speed.compile != "none" and not self.compile_artifacts:
            raise ValueError("--warmup with --compile regional needs --compile-artifacts: warming several sizes "
                             "under torch's default shapes would leave dynamic-shape graphs, where the artifacts' "
                             "compile makes one static graph per size")
        if self.compile_artifacts:
            self._check_compile_artifacts()

    def _check_compile_artifacts(self) -> None:
        if self.engine != "torch" or self.speed.compile == "none":
            raise ValueError("--compile-artifacts needs engine 'torch' with --compile regional (it saves what the "
                             "compile makes)")
        if self.low_memory:
            raise ValueError("--compile-artifacts is not supported with --low-memory yet (the warm-up would leave "
                             "every expert's weights on the GPU)")
        if self.parallel.ulysses > 1:
            raise ValueError("--compile-artifacts is not supported with ulysses > 1 yet (the export compiles one "
                             "device's graphs, not a sequence-parallel group's)")
        if self.device == "gpu":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("--compile-artifacts with --device gpu compiles on this machine's GPU, which must be "
                                 "of the serving kind (same GPU, torch, CUDA, Triton); no CUDA GPU is visible")
