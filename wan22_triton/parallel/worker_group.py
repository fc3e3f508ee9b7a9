"""One model instance driving a group of devices: rank 0 is the instance's own process, ranks 1.. are worker
processes it spawns, one per extra device, joined in a torch.distributed group (NCCL on GPUs, gloo on the CPU).

Each call sends the step's tensor shapes to the workers over a pipe (workers wait there while idle, so an idle
group never hits a collective timeout), broadcasts the tensors from rank 0 and runs the model on every rank; rank 0
returns the result. Workers live and die with the instance: they exit when rank 0's process goes (parent-death
signal, closed pipe) or when told to at `shutdown`. Every collective has the group's timeout.

Faults: a monitor thread watches the workers; one that exits mid-step aborts the group so the blocked collective
returns, and the call fails with `GroupFailed` naming the worker and its exit code. A dead or failed group is rebuilt
(workers respawned, every rank reloads its model) at the next call, so the model recovers without a restart.

Workers fork from multiprocessing's fork server, which imports torch and the expert's diffusers module once per
instance (WORKER_PRELOAD): a rank then starts in a fork, not in a fresh Python paying seconds of imports. The
server initialises no CUDA, so NCCL ranks stay safe; it exits with the instance, and the workers with it.
"""

from __future__ import annotations

import ctypes
import datetime
import multiprocessing as mp
import os
import signal
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

import torch
import torch.distributed as dist

from wan22_triton.operations import events
from wan22_triton.engines.loading import release_workspace as _release_workspace

WORKER_PRELOAD = ("torch", "torch.distributed", "diffusers.models.transformers.transformer_wan", __name__)
RELEASE = "release_workspace"  # a message to the workers between steps (loading.release_workspace)
# (device, process group) -> the model every rank runs; picklable (a module-level function or a partial of one)
Build = Callable[[torch.device, Any], torch.nn.Module]


class GroupFailed(RuntimeError):
    """A step failed because a rank of the group failed; the group is rebuilt at the next call."""


def rendezvous(port: int, world_size: int, timeout_s: float) -> dist.TCPStore:
    """The group's store: port 0 makes it (rank 0, on a port the kernel picks and it keeps bound, so no other
    process can take it in between); a port joins it (the other ranks)."""
    return dist.TCPStore("127.0.0.1", port, world_size, is_master=port == 0,
                         timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False)


def _init_group(rank: int, devices: list[torch.device], store: dist.TCPStore, timeout_s: float) -> None:
    backend = "nccl" if devices[0].type == "cuda" else "gloo"
    if devices[rank].type == "cuda":
        torch.cuda.set_device(devices[rank])
    dist.init_process_group(backend, store=store, rank=rank, world_size=len(devices),
                            timeout=datetime.timedelta(seconds=timeout_s))


def _die_with_parent() -> None:
    """SIGKILL this process when the instance that spawned it dies, however it dies (Linux prctl)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _worker_main(rank: int, devices: list[torch.device], port: int, timeout_s: float, build: Build,
                 conn: Connection, name: str = "", environ: dict[str, str] | None = None) -> None:
    _die_with_parent()
    if environ is not None:  # the instance's environment now, not the fork server's at its start
        os.environ.clear()
        os.environ.update(environ)
    device = devices[rank]
    _init_group(rank, devices, rendezvous(port, len(devices), timeout_s), timeout_s)
    model = build(device, dist.group.WORLD)
    _release_workspace(name, device, "load", rank=rank)  # as rank 0's model instance does after its setup
    conn.send("ready")
    with torch.inference_mode():
        while (message := conn.recv()) is not None:  # EOFError, and exit, once the instance is gone
            if message == RELEASE:  # rank 0 released its workspace: so does every rank
                _release_workspace(name, device, "call", rank=rank)
                continue
            shapes, options = message
            tensors = {name: torch.empty(shape, dtype=dtype, device=device) for name, shape, dtype in shapes}
            for tensor in tensors.values():
                dist.broadcast(tensor, src=0)
            model(**tensors, **options)
            _sync(device)
    dist.destroy_process_group()


class WorkerGroup:
    """Callable like the model it runs: `group(**tensors, **options)` -> rank 0's output."""

    def __init__(self, name: str, devices: list[torch.device], build: Build, timeout_s: float,
                 log: Callable[[str], None] = print, log_error: Callable[[str], None] = print):
        self.name, self.devices, self.build, self.timeout_s = name, devices, build, timeout_s
        self.log, self.log_error = log, log_error
        self.model: torch.nn.Module | None = None
        self.workers: list[mp.process.BaseProcess] = []
        self.pipes: list[Connection] = []
        self.failure: str | None = None  # why the running group can no longer serve
        self._in_step = threading.Event()
        self._stop_monitor: tuple[Connection, Connection] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> WorkerGroup:
        """Spawn the workers, join the group, load the model on every rank; on any failure nothing is left behind
        (workers stopped, group left), so a later start begins afresh."""
        try:
            return self._start()
        except BaseException:
            self.shutdown()
            raise

    def _start(self) -> WorkerGroup:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(list(WORKER_PRELOAD))  # read when the server starts: at the first group
        store = rendezvous(0, len(self.devices), self.timeout_s)
        for rank in range(1, len(self.devices)):
            ours, theirs = ctx.Pipe()
            worker = ctx.Process(target=_worker_main, name=f"{self.name}-rank{rank}",
                                 args=(rank, self.devices, store.port, self.timeout_s, self.build, theirs, self.name,
                                       dict(os.environ)))
            worker.start()
            theirs.close()
            self.workers.append(worker)
            self.pipes.append(ours)
        _init_group(0, self.devices, store, self.timeout_s)
        self.model = self.build(self.devices[0], dist.group.WORLD)
        for rank, pipe in enumerate(self.pipes, start=1):
            self._wait_ready(rank, pipe)
        self.failure = None
        self._start_monitor()
        pids = [w.pid for w in self.workers]
        events.emit("sequence_group_started", model=self.name, devices=[str(d) for d in self.devices], workers=pids)
        self.log(f"{self.name}: sequence-parallel group of {len(self.devices)} ranks on "
                 f"{[str(d) for d in self.devices]}, worker pids {pids}")
        return self

    def _wait_ready(self, rank: int, pipe: Connection) -> None:
        worker = self.workers[rank - 1]
        while not pipe.poll(1.0):  # loading the weights may take minutes; a worker that dies meanwhile fails fast
            if not worker.is_alive():
                raise GroupFailed(f"{self.name}: rank {rank} ({self.devices[rank]}) exited with code "
                                  f"{worker.exitcode} while loading")
        if pipe.recv() != "ready":
            raise GroupFailed(f"{self.name}: rank {rank} sent an unexpected message while loading")

    def shutdown(self) -> None:
        """Stop the workers (asked, then terminated) and leave the process group."""
        if self._stop_monitor is not None:
            self._stop_monitor[1].send(None)
            self._stop_monitor = None
        for pipe in self.pipes:
            try:
                pipe.send(None)
            except OSError:
                pass
        for worker in self.workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=5)
        self.workers, self.pipes, self.model = [], [], None
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as exc:  # an aborted group may refuse; the next init starts a new one anyway
                self.log_error(f"{self.name}: leaving the process group: {exc}")
        if self.devices[0].type == "cuda":
            torch.cuda.empty_cache()

    def release_workspace(self) -> None:
        """Every worker hands its PyTorch cache back (rank 0's model instance releases its own)."""
        for pipe in self.pipes:
            try:
                pipe.send(RELEASE)
            except OSError:  # a dead worker: the next step rebuilds the group
                pass

    # -- faults ------------------------------------------------------------------------------------------------
    def _start_monitor(self) -> None:
        stop = mp.Pipe(duplex=False)
        self._stop_monitor = stop
        sentinels = [w.sentinel for w in self.workers]

        def watch() -> None:
            if stop[0] in wait([*sentinels, stop[0]]):
                return
            self.failure = self._dead_worker(wait_s=1.0)
            events.emit("sequence_group_failed", model=self.name, reason=self.failure)
            self.log_error(f"{self.name}: sequence-parallel {self.failure}")
            if self._in_step.is_set():  # unblock the collective rank 0 waits in
                try:
                    dist.distributed_c10d._abort_process_group()
                except Exception as exc:
                    self.log_error(f"{self.name}: aborting the process group: {exc}")

        threading.Thread(target=watch, name=f"{self.name}-group-monitor", daemon=True).start()

    def _dead_worker(self, wait_s: float) -> str | None:
        """The first worker that has exited (waiting up to `wait_s` for one), described; None if all live."""
        deadline = time.monotonic() + wait_s
        while True:
            for rank, worker in enumerate(self.workers, start=1):
                if worker.exitcode is not None:
                    return f"rank {rank} ({self.devices[rank]}, pid {worker.pid}) exited with code {worker.exitcode}"
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def _restart(self) -> None:
        self.log(f"{self.name}: rebuilding the sequence-parallel group ({self.failure})")
        self.shutdown()
        self.start()

    # -- a step ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(self, **inputs: Any) -> Any:
        if self.failure is not None or self.model is None or not all(w.is_alive() for w in self.workers):
            self.failure = self.failure or "a worker exited while idle"
            self._restart()
        tensors = {k: v.to(self.devices[0]).contiguous() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        options = {k: v for k, v in inputs.items() if not isinstance(v, torch.Tensor)}
        shapes = [(name, tuple(t.shape), t.dtype) for name, t in tensors.items()]
        self._in_step.set()
        try:
            for pipe in self.pipes:
                pipe.send((shapes, options))
            for tensor in tensors.values():
                dist.broadcast(tensor, src=0)
            assert self.model is not None
            out = self.model(**tensors, **options)
            _sync(self.devices[0])
            return out
        except Exception as exc:
            # a peer's death often reaches rank 0 as a transport error before the monitor has seen the exit
            self.failure = self._dead_worker(wait_s=2.0) or self.failure or f"{type(exc).__name__}: {exc}"
            raise GroupFailed(f"the sequence-parallel step failed: {self.failure}; the group is rebuilt with the "
                              "next request") from exc
        finally:
            self._in_step.clear()
