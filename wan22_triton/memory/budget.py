"""GPU memory a repository needs, known before READY: what its models hold on its fullest GPU, phase by phase.

The export measures the weights from the checkpoint's configs (export/memory.py) and writes a `MemoryModel` into
every GPU model's manifest. At load, each model compares the need at the largest size it must serve (the shape
spec's, else the checkpoint's default video) with its card and refuses to load, with one line naming the need and
the ways out, instead of running out of memory at a request; the orchestrator checks each request's size the same
way (a size this card cannot hold is INVALID_ARG, not an out-of-memory error in an expert).

The peak is the largest of four phases on the replica's first GPU (it holds the text encoder, the VAE, the
orchestrators and the first instance of each expert):
- load: each expert, one at a time (the device's first-call lock), at its loading peak (FP8: its BF16 weights)
  while the others hold what they serve;
- step: what stays resident plus one expert call's working set at the size (tokens x CFG batch);
- decode: what stays resident plus the VAE's decode workspace (low-memory mode: with the last expert still on);
- encode: what stays resident plus the text encoder when it is offloaded.
The working sets are measured factors (CALIBRATION); tests/test_memory_budget.py checks the model against the
measured peaks in perf/results/gpu/.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wan22_triton.errors import DoesNotFit

if TYPE_CHECKING:
    from wan22_triton.checkpoint import CheckpointInfo

GIB = 1 << 30
FFN_ELEMENT_BYTES = 2  # the working set's unit: one BF16 element of an expert's FFN row


@dataclass(frozen=True)
class Calibration:
    """Working sets and per-process costs, measured on an H100 80GB and an H200 at 480x832x81 with CFG
    (perf/results/gpu: gpu_benchmark's fast tier, low_memory, lora, memory_budget); per-process GPU memory from NVML."""

    process_bytes: int = int(0.7 * GIB)  # a CUDA context and its libraries (tritonserver 0.57, text encoder 0.70)
    expert_process_bytes: int = int(1.6 * GIB)  # an expert's process beyond its context and weights (workspaces)
    # one expert call, bytes per token row (tokens x batch) per FFN element at FFN_ELEMENT_BYTES:
    compiled_fp8_row: float = 3.79  # FP8 GEMMs and attention, compiled: 6.4 GiB at 480p
    eager_fp8_row: float = 14.54  # FP8 GEMMs and attention, eager (adapters or not): 24.5 GiB
    eager_row: float = 5.67  # BF16, eager SDPA (and every mode not measured on its own): 9.6 GiB
    lora_row: float = 7.49  # BF16 with an adapter on: 12.6 GiB
    vae_pixel: float = 10.5  # decode workspace per output pixel, in widest decoder channels x 4 bytes: 6.0 GiB
    headroom: float = 1.03  # the need times this must fit the card (fragmentation)


CALIBRATION = Calibration()


@dataclass(frozen=True)
class Need:
    """The peak of one video size, by phase: `phases` maps a phase to its bytes and `parts` its breakdown."""

    size: tuple[int, int, int]
    phases: dict[str, int]
    parts: dict[str, list[tuple[str, int]]]

    @property
    def label(self) -> str:
        """The size as the contract writes it: FRAMESxHEIGHTxWIDTH."""
        return "x".join(map(str, self.size))

    @property
    def phase(self) -> str:
        return max(self.phases, key=self.phases.get)

    @property
    def bytes(self) -> int:
        return self.phases[self.phase]

    def describe(self) -> str:
        parts = ", ".join(f"{name} {gib(b)}" for name, b in self.parts[self.phase] if b)
        return f"{gib(self.bytes)} at {self.phase} ({parts})"


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


@dataclass(frozen=True)
class MemoryModel:
    """What the models of one repository hold on its fullest GPU (bytes), from the export."""

    text_encoder: int  # weights as served
    experts: tuple[int, ...]  # each expert's weights as served (FP8 quantized, adapters included)
    expert_loads: tuple[int, ...]  # each expert's weights at its loading peak
    vae: int  # the VAE models' weights (decoder, and encoder where images are taken)
    ffn_dim: int  # the experts' FFN width
    vae_channels: int  # the decoder's widest channel count
    processes: int  # processes with a CUDA context on the GPU, experts included (tritonserver, orchestrators...)
    row_factor: float  # a Calibration row factor, chosen by the export for the speed options and adapters
    cfg_batch: int = 2  # rows per token of one expert call: 2 with CFG on one instance, 1 with cfg_parallel
    ulysses: int = 1  # the tokens are split over this many GPUs
    text_encoder_resident: bool = True
    experts_resident: bool = True
    quantized: bool = False  # FP8 experts
    adapters: bool = False  # LoRA adapters served (the export refuses them with --low-memory)

    def ways_out(self) -> str:
        """The export options that would take memory off this repository's GPU."""
        ways = ([] if self.quantized else ["--quantization fp8_rowwise (the fast tier)"]) + (
            ["--text-encoder-offload"] if self.text_encoder_resident else []) + (
            ["--low-memory"] if self.experts_resident and not self.adapters else [])
        if not ways:
            return "serve it on a GPU with more memory"
        return "export with " + (", ".join(ways[:-1]) + " or " + ways[-1] if len(ways) > 1 else ways[0])

    def need(self, info: CheckpointInfo, size: tuple[int, int, int], cal: Calibration = CALIBRATION) -> Need:
        """The peak at (num_frames, height, width)."""
        frames, height, width = size
        tokens = math.ceil(info.tokens(*info.latent_shape(frames, height, width)[1:]) / self.ulysses)
        step_work = int(tokens * self.cfg_batch * self.ffn_dim * FFN_ELEMENT_BYTES * self.row_factor)
        pixels = height * width
        decode_work = int(pixels * self.vae_channels * 4 * cal.vae_pixel + frames * 3 * pixels * 4)
        experts = len(self.experts)
        contexts = ("processes", self.processes * cal.process_bytes + experts * cal.expert_process_bytes)
        text = ("text encoder", self.text_encoder)
        base = [contexts, ("VAE weights", self.vae)] + ([text] if self.text_encoder_resident else [])
        resident = base + ([("experts", sum(self.experts))] if self.experts_resident else [])
        load = list(base)
        if self.experts_resident:  # else they load into host memory
            largest = max(range(experts), key=lambda i: self.expert_loads[i] - self.experts[i])
            load += [("expert loading", self.expert_loads[largest]),
                     ("other experts", sum(self.experts) - self.experts[largest])]
        call = (f"expert call ({tokens} tokens x {self.cfg_batch})", step_work)
        # low-memory mode: the last expert is measured still on the GPU, with its working set, as the VAE decodes
        active = [] if self.experts_resident else [("active expert", max(self.experts)), call]
        parts = {
            "load": load,
            "step": resident + (active or [call]),
            "decode": resident + active + [("VAE decode", decode_work)],
            "encode": resident + ([] if self.text_encoder_resident else [text]),
        }
        return Need(size, {phase: sum(b for _, b in items) for phase, items in parts.items()}, parts)

    def refusal(self, info: CheckpointInfo, size: tuple[int, int, int], card_bytes: int,
                cal: Calibration = CALIBRATION) -> str | None:
        """Why `size` does not fit a card of `card_bytes`, or None when it does."""
        need = self.need(info, size, cal)
        if need.bytes * cal.headroom <= card_bytes:
            return None
        return f"{need.label} needs ~{need.describe()}; the GPU has {gib(card_bytes)}"


def check_load(memory: MemoryModel | None, info: CheckpointInfo,
               video_sizes: tuple[tuple[int, int, int], ...] | None, card_bytes: int | None, who: str) -> None:
    """DoesNotFit, one line, when the repository cannot hold the largest size it must serve on this card."""
    if memory is None or not card_bytes:
        return
    problem = memory.refusal(info, served_size(info, video_sizes), card_bytes)
    if problem:
        raise DoesNotFit(f"{who}: this repository does not fit its GPU: {problem}; {memory.ways_out()}")


def served_size(info: CheckpointInfo, video_sizes: tuple[tuple[int, int, int], ...] | None) -> tuple[int, int, int]:
    """The size a repository must hold at load: its largest declared size, else the checkpoint's default video."""
    if video_sizes:
        return max(video_sizes, key=lambda s: s[0] * s[1] * s[2])
    return info.default_num_frames, info.default_height, info.default_width

