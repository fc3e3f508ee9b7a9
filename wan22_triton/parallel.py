"""Several devices per server: the export's `ParallelPlan`, where it puts each model instance, and the CFG split.

Three modes, composable; a plan uses replicas x cfg_parallel x ulysses devices (GPUs, or CPU processes on a CPU export):

* replicas: whole pipelines (text encoder, VAE, orchestrator, experts), one per device group, so concurrent requests
  run side by side. Triton's instance groups do it: every model gets an instance on each replica's first device.
* cfg_parallel = 2: a guided step's conditional and unconditional halves run at once, on two instances of the expert (one per
  device), sent by the orchestrator as two concurrent BLS requests that Triton's scheduler places (`split_cfg`).
* ulysses = N: each expert instance drives N devices, sequence parallel (wan22_triton.sequence_parallel), through its
  own worker processes (wan22_triton.worker_group). 8 GPUs: e.g. cfg_parallel 2 x ulysses 4.

Device layout of replica r, cfg half c, Ulysses rank u: r * cfg_parallel * ulysses + c * ulysses + u. The text encoder, the
VAE and the orchestrator of a replica sit on its first device, with its first expert group.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch

from .checkpoint import CheckpointInfo


@dataclass(frozen=True)
class ParallelPlan:
    replicas: int = 1
    cfg_parallel: int = 1  # 1, or 2: CFG halves on two expert instances at once
    ulysses: int = 1  # devices per expert instance (sequence parallel); must divide the attention heads
    # pieces each rank's heads are exchanged and attended in, so one piece's exchange overlaps another's attention
    # (1: one exchange, nothing overlapped; at most the heads per rank are used: wan22_triton.sequence_parallel)
    ulysses_chunks: int = 2
    collective_timeout_s: int = 300  # a Ulysses step whose collectives do not finish by then fails

    @property
    def devices(self) -> int:
        return self.replicas * self.cfg_parallel * self.ulysses

    @property
    def active(self) -> bool:
        return self.devices > 1

    def check(self, info: CheckpointInfo) -> None:
        """ValueError naming what the checkpoint or the plan does not allow."""
        if self.replicas < 1 or self.ulysses < 1 or self.cfg_parallel not in (1, 2):
            raise ValueError(f"parallel plan needs replicas >= 1, cfg_parallel 1 or 2, ulysses >= 1; got {self}")
        check_heads(info.num_attention_heads, self.ulysses)
        if self.ulysses_chunks < 1:
            raise ValueError(f"ulysses_chunks must be >= 1, got {self.ulysses_chunks}")
        if self.collective_timeout_s <= 0:
            raise ValueError(f"collective_timeout_s must be > 0, got {self.collective_timeout_s}")

    def pipeline_devices(self) -> list[int]:
        """The first device of each replica: text encoder, VAE and orchestrator instances."""
        return [r * self.cfg_parallel * self.ulysses for r in range(self.replicas)]

    def expert_devices(self) -> list[int]:
        """The lead device of each expert instance (one per replica and CFG half)."""
        return [lead + c * self.ulysses for lead in self.pipeline_devices() for c in range(self.cfg_parallel)]

    def group_devices(self, lead: torch.device) -> list[torch.device]:
        """The devices of the Ulysses group an instance on `lead` drives, `lead` first (CPU: `ulysses` times cpu)."""
        if lead.type == "cpu":
            return [lead] * self.ulysses
        return [torch.device(lead.type, (lead.index or 0) + u) for u in range(self.ulysses)]


def check_heads(num_heads: int, ulysses: int) -> None:
    """Ulysses gives each rank num_heads / ulysses heads: ValueError naming the divisors otherwise."""
    if num_heads % ulysses:
        raise ValueError(f"ulysses {ulysses} must divide the experts' {num_heads} attention heads "
                         f"(choose from {[d for d in range(1, num_heads + 1) if num_heads % d == 0]})")


# (served expert, latents, timesteps, embeddings) -> noise, as Wan22T2VPipeline calls its expert
ExpertCall = Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor], object]


def split_cfg(expert: ExpertCall, pool: ThreadPoolExecutor) -> ExpertCall:
    """`expert` with a guided batch [cond, uncond] sent as two concurrent calls of one item each (two instances of
    the expert work on them at once); a batch of one (CFG off) goes as it is."""

    def call(model: str, latents: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor, **kwargs):
        # kwargs: the request's `lora` (pipeline.predict_noise), the same for both halves
        if latents.shape[0] == 1:
            return expert(model, latents, timestep, embeds, **kwargs)
        halves = [pool.submit(expert, model, latents[i:i + 1], timestep[i:i + 1], embeds[i:i + 1], **kwargs)
                  for i in (0, 1)]
        cond, uncond = (torch.as_tensor(h.result()) for h in halves)
        return torch.cat([cond, uncond.to(cond.device)])

    return call
