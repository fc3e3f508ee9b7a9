"""Several devices per server: the export's `ParallelPlan`, where it puts each model instance, and the CFG split.

Three modes, composable; a plan uses replicas x cfg_parallel x ulysses devices (GPUs, or CPU processes on a CPU export):

* replicas: whole pipelines (text encoder, experts, VAE), one per device group, so concurrent requests run side by
  side. Each of those models has one version per replica (version r + 1 on replica r's devices: its instances are
  KIND_MODEL, placed by the model itself, `replica_devices`), and each generation holds a replica (`ReplicaSlots`:
  the one with the fewest generations in progress) and sends all its BLS calls to that version. Instance groups
  alone would not keep a request on its replica: Triton places each model's calls on any idle instance, so two
  requests' text encoder, experts and VAE would meet on one GPU while the other idles. The orchestrator has
  instances on every replica's first device.
* cfg_parallel = 2: a guided step's conditional and unconditional halves run at once, on two instances of the expert (one per
  device), sent by the orchestrator as two concurrent BLS requests that Triton's scheduler places (`split_cfg`).
* ulysses = N: each expert instance drives N devices, sequence parallel (wan22_triton.parallel.sequence_parallel), through its
  own worker processes (wan22_triton.parallel.worker_group). 8 GPUs: e.g. cfg_parallel 2 x ulysses 4.

Device layout of replica r, cfg half c, Ulysses rank u: r * cfg_parallel * ulysses + c * ulysses + u. The text encoder, the
VAE and the orchestrator of a replica sit on its first device, with its first expert group.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from wan22_triton.checkpoint import CheckpointInfo
from wan22_triton.operations.locks import InterProcessLock, lock_path

if TYPE_CHECKING:  # torch only where a plan runs: the manifest (and the clients of it) read plans without it
    import torch


@dataclass(frozen=True)
class ParallelPlan:
    replicas: int = 1
    cfg_parallel: int = 1  # 1, or 2: CFG halves on two expert instances at once
    ulysses: int = 1  # devices per expert instance (sequence parallel); must divide the attention heads
    # pieces each rank's heads are exchanged and attended in, so one piece's exchange overlaps another's attention
    # (1: one exchange, nothing overlapped; at most the heads per rank are used: wan22_triton.parallel.sequence_parallel)
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

    @property
    def devices_per_replica(self) -> int:
        return self.cfg_parallel * self.ulysses

    def replica_devices(self, replica: int, expert: bool) -> list[int]:
        """Where replica `replica`'s instances of a model go: an expert's lead devices (one per CFG half), or the
        replica's first device (text encoder, VAE, orchestrator)."""
        first = replica * self.devices_per_replica
        return [first + c * self.ulysses for c in range(self.cfg_parallel)] if expert else [first]

    def replica_of(self, device: int) -> int:
        return device // self.devices_per_replica

    def pipeline_devices(self) -> list[int]:
        """The first device of each replica: text encoder, VAE and orchestrator instances."""
        return [d for r in range(self.replicas) for d in self.replica_devices(r, expert=False)]

    def group_devices(self, lead: torch.device) -> list[torch.device]:
        """The devices of the Ulysses group an instance on `lead` drives, `lead` first (CPU: `ulysses` times cpu)."""
        import torch

        if lead.type == "cpu":
            return [lead] * self.ulysses
        return [torch.device(lead.type, (lead.index or 0) + u) for u in range(self.ulysses)]


def check_heads(num_heads: int, ulysses: int) -> None:
    """Ulysses gives each rank num_heads / ulysses heads: ValueError naming the divisors otherwise."""
    if num_heads % ulysses:
        raise ValueError(f"ulysses {ulysses} must divide the experts' {num_heads} attention heads "
                         f"(choose from {[d for d in range(1, num_heads + 1) if num_heads % d == 0]})")


# (served expert, latents, timesteps, embeddings) -> noise, as Wan22T2VPipeline calls its expert
ExpertCall = Callable[[str, "torch.Tensor", "torch.Tensor", "torch.Tensor"], object]


def split_cfg(expert: ExpertCall, pool: ThreadPoolExecutor) -> ExpertCall:
    """`expert` with a guided batch [cond, uncond] sent as two concurrent calls of one item each (two instances of
    the expert work on them at once); a batch of one (CFG off) goes as it is."""
    import torch

    def call(model: str, latents: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor, **kwargs):
        # kwargs: the request's `lora` (pipeline.predict_noise), the same for both halves
        if latents.shape[0] == 1:
            return expert(model, latents, timestep, embeds, **kwargs)
        halves = [pool.submit(expert, model, latents[i:i + 1], timestep[i:i + 1], embeds[i:i + 1], **kwargs)
                  for i in (0, 1)]
        cond, uncond = (torch.as_tensor(h.result()) for h in halves)
        return torch.cat([cond, uncond.to(cond.device)])

    return call


class ReplicaSlots:
    """The replica each generation runs on, chosen across all orchestrator processes of a server: the one with the
    fewest generations in progress, `prefer` first among equals. One fcntl lock per replica and slot (slot k of
    every replica is tried before slot k + 1), held for the generation; the kernel drops a dead holder's."""

    def __init__(self, model_repository: str | Path, replicas: int, slots: int):
        self.locks = [[InterProcessLock(lock_path(model_repository, f"replica-{r}-slot-{k}")) for k in range(slots)]
                      for r in range(replicas)]

    @contextlib.contextmanager
    def hold(self, prefer: int = 0, poll_s: float = 0.05) -> Iterator[int]:
        replicas = len(self.locks)
        order = [(prefer + i) % replicas for i in range(replicas)]
        while True:  # every slot taken only when more generations run than the orchestrators have instances
            for k in range(len(self.locks[0])):
                for r in order:
                    lock = self.locks[r][k]
                    if lock.try_acquire():
                        try:
                            yield r
                        finally:
                            lock.release()
                        return
            time.sleep(poll_s)
