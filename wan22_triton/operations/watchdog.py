"""The component watchdog: a Python-backend stub of this server that dies is noticed at once and its model reloaded.

Triton 2.51's Python backend never restarts a dead stub (python_be.cc r24.10: "TODO: Implement restart"): the model
stays READY, `/v2/health/ready` answers 200, and every request to it fails INTERNAL with "Stub process '<instance>'
is not healthy" until the server is restarted. The NGC container runs tritonserver directly, so the cure has to live
in the repository: every model starts this watchdog (triton_io.start_watchdog). It holds a pidfd of every stub of its
server and, when one dies, unloads and reloads that stub's model through Triton's model-control API (pb_utils). Unload
first: while the model loads, Triton reports it, and with `--strict-readiness` the server, not ready (measured: ready
again only when the reload is done, not ready within 30 ms of the death); a load that fails leaves the model
UNAVAILABLE, so the server keeps saying it cannot serve, and is tried again every RETRY_SECONDS (a file fixed in the
repository is picked up without a restart). A stub that dies during a request fails that request ("is not healthy"),
and Triton 2.51 never finishes unloading that old model version: the reloaded one serves, but the server's stop then
waits for its exit timeout and exits 1. Needs
`--model-control-mode=explicit --load-model=*`, read from tritonserver's command line: in the other modes
pb_utils.unload_model crashes the calling stub (SIGSEGV, measured on 2.51), so there a death is only reported
(`component_restart_failed`, an error in the log) and the server stays broken until it is restarted.

Died, not ended: Triton reaps a stub (waitpid) only when it ends it (unload, shutdown; the stub then exits 0). A stub
that died on its own stays a zombie with its signal or error status until its model is unloaded, so that zombie is
the evidence: it tells a death from an unload without asking the server anything (pb_utils.is_model_ready during
the server's shutdown crashed tritonserver 2.51).

One watcher per model (a claim: when its process dies another instance of the model takes over), and each watches
every model but its own (its own reload would end the watcher in the middle): every death is seen as long as one
model of the server lives, two at once included (both orchestrators: the components reload them). A claim per model
and one per death let one watcher handle each death, and a watcher takes one model per fault: the models of a fault
are unloaded at once and load side by side in several processes, so the server does not say ready while one of them
is still dead (Triton's readiness leaves out an unloaded model, and one stub's loads run one after another). Claims
are locks on files in this user's private folder (operations.locks): the kernel drops them with their process, and
no other user can take or block them.

Events (wan22_triton.operations.events): ``component_died`` (model, instance, stub_pid, exit_status: waitpid's), then
``component_restarted`` (model, instance, seconds, stub_pids: the model's new stubs) or ``component_restart_failed``
(model, instance, error).
"""

from __future__ import annotations

import os
import select
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from wan22_triton.operations import events
from wan22_triton.operations.locks import InterProcessLock, private_dir, repository_key
from wan22_triton.operations.procfs import read_stat

STUB_EXECUTABLE = "triton_python_backend_stub"
NO_RELOAD = ("tritonserver runs without --model-control-mode=explicit: a component process that dies cannot be "
             "reloaded and its model fails every request until the server restarts (start it with "
             "--model-control-mode=explicit --load-model=*)")
RESCAN_SECONDS = 1.0  # how often new stubs (startup, reloads) are picked up; a known stub's death is seen at once
# Deaths this close (a kill of several, the OOM killer) are one fault: unloaded at once, loaded after this. Shorter
# than a Triton unload (its stub takes ~1.0 s to go, measured): a load asked after the old version has gone leaves the
# model absent, and the server ready, in between (seen when this was 1.0 s); one asked together with the unload
# replaces the version without ever saying not ready (seen at 0.25 s after a death during a request)
TOGETHER_S = 0.6
# A load that failed (a file broken in the repository) is tried again this often, until it works; the server's
# environment may set another period
RETRY_ENV = "WAN22_RELOAD_RETRY_SECONDS"
RETRY_SECONDS = float(os.environ.get(RETRY_ENV, 15.0))


@dataclass(frozen=True)
class Stub:
    pid: int
    model: str
    instance: str


@dataclass(frozen=True)
class ModelControl:
    """Triton's model-control calls as the Python backend offers them (pb_utils.unload_model, load_model); passed
    in, so this module does not import pb_utils."""

    unload: Callable[[str], object]
    load: Callable[[str], object]


def server_stubs(server_pid: int) -> list[Stub]:
    """The live Python-backend stubs that the tritonserver `server_pid` started."""
    stubs = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stub = _stub_of(int(entry.name), server_pid)
            if stub is not None:
                stubs.append(stub)
    return stubs


def _stub_of(pid: int, server_pid: int) -> Stub | None:
    # The stub's argv (stub_launcher.cc): stub, <repository>/<model>/<version>/model.py, shm region, two shm sizes,
    # parent pid, libpython, ipc handle, instance name, ... A zombie's cmdline is empty: not a live stub.
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if len(argv) < 9 or Path(os.fsdecode(argv[0])).name != STUB_EXECUTABLE or argv[5] != str(server_pid).encode():
        return None
    return Stub(pid, Path(os.fsdecode(argv[1])).parts[-3], os.fsdecode(argv[8]))


def model_control_mode(server_pid: int) -> str:
    """tritonserver's --model-control-mode (the last one given; "none" without one), from its command line."""
    argv = [os.fsdecode(a) for a in Path(f"/proc/{server_pid}/cmdline").read_bytes().split(b"\0")]
    mode = "none"
    for flag, value in zip(argv, argv[1:] + [""]):
        if flag.startswith("--model-control-mode="):
            mode = flag.partition("=")[2]
        elif flag == "--model-control-mode":
            mode = value
    return mode


def claim(name: str) -> InterProcessLock | None:
    """Holds `name` for this process until released (or the process ends); None if another holds it."""
    held = InterProcessLock(private_dir() / f"{name}.claim")
    return held if held.try_acquire() else None


def death_status(pid: int) -> int | None:
    """waitpid's status of `pid` if it is a zombie that was killed or failed; None if it is alive, was reaped, or
    exited 0."""
    stat = read_stat(pid)
    if stat is None or stat.live or not stat.exit_code:
        return None
    return stat.exit_code


class ComponentWatchdog:
    """A thread that reloads the model of any stub of this server that dies (see the module's docstring)."""

    def __init__(self, own_model: str, model_repository: str, control: ModelControl,
                 log_info: Callable[[str], object], log_error: Callable[[str], object], server_pid: int | None = None):
        self.own_model = own_model
        self.control = control
        self.log_info, self.log_error = log_info, log_error
        self.server_pid = server_pid or os.getppid()  # the stubs are tritonserver's children
        self.can_reload = model_control_mode(self.server_pid) == "explicit"
        self._claims = f"wan22-watchdog-{repository_key(model_repository)}-{self.server_pid}"
        self._stop = threading.Event()
        self._wake_read, self._wake_write = os.pipe()  # stop() wakes the poll
        self._poll = select.poll()
        self._poll.register(self._wake_read, select.POLLIN)
        self._watched: dict[int, Stub] = {}  # pidfd -> the stub it refers to
        # Claims on the deaths this watcher handled, kept: the zombie can outlive the reload (a failed one, or a death
        # during a request, whose model version Triton never finishes unloading).
        self._handled: list[InterProcessLock] = []
        self._failed: dict[str, tuple[float, list[tuple[Stub, int]]]] = {}  # model -> (next try, its deaths)
        self._thread = threading.Thread(target=self._run, name=f"watchdog-{own_model}", daemon=True)

    def _claim(self, what: str, poll_s: float) -> InterProcessLock | None:
        """Waits for the claim on `what` of this server (the watcher of a model); None once stopped."""
        while not self._stop.is_set():
            held = claim(f"{self._claims}-{what}")
            if held is not None:
                return held
            self._stop.wait(poll_s)
        return None

    def _model_claim(self, model: str) -> InterProcessLock | None:
        """The claim on reloading `model` (None: another watcher holds it)."""
        return claim(f"{self._claims}-model-{model}")

    def start(self) -> "ComponentWatchdog":
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ends the thread; one blocked in a reload is left to end with the process (it is a daemon)."""
        self._stop.set()
        os.write(self._wake_write, b"x")
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _run(self) -> None:
        watcher = self._claim(f"watcher-{self.own_model}", RESCAN_SECONDS)  # another instance may be the watcher
        if watcher is None:
            return
        try:
            self.log_info(f"watchdog: watching the Python-backend stubs of tritonserver {self.server_pid} "
                          f"(every model but {self.own_model})")
            if not self.can_reload:
                self.log_error(f"watchdog: {NO_RELOAD}")
            while not self._stop.is_set():
                exited = self._watch_new_stubs() + self._wait_for_exits(RESCAN_SECONDS)
                if exited and not self._stop.is_set():
                    self._recover(exited)
                self._retry_failed_loads()
        except Exception as e:  # a watchdog that stops must say so
            self.log_error(f"watchdog stopped by an error: {type(e).__name__}: {e}")
        finally:
            for fd in self._watched:
                os.close(fd)
            watcher.release()

    def _watch_new_stubs(self) -> list[Stub]:
        """Opens a pidfd for each stub not watched yet; returns those that exited before it could be opened."""
        watched = {stub.pid for stub in self._watched.values()}
        exited = []
        for stub in server_stubs(self.server_pid):
            if stub.model == self.own_model or stub.pid in watched:
                continue
            try:
                fd = os.pidfd_open(stub.pid)
            except ProcessLookupError:
                exited.append(stub)
                continue
            if _stub_of(stub.pid, self.server_pid) != stub:  # exited (or its pid reused) since the scan
                os.close(fd)
                exited.append(stub)
                continue
            self._watched[fd] = stub
            self._poll.register(fd, select.POLLIN)
        return exited

    def _wait_for_exits(self, timeout_s: float) -> list[Stub]:
        exited = []
        for fd, _ in self._poll.poll(timeout_s * 1000):
            if fd in self._watched:  # not the stop's wake-up
                self._poll.unregister(fd)
                os.close(fd)
                exited.append(self._watched.pop(fd))
        return exited

    def _recover(self, exited: list[Stub]) -> None:
        """Reloads the model of stubs that died (not those Triton ended) that no other watcher handles: one model per
        watcher and fault, so that the models of one fault load side by side in several processes (a stub's loads run
        one at a time, and Triton's readiness leaves out an unloaded model: loads one after another would let the
        server say ready between them). Its deaths are unloaded at once, and so are its deaths within TOGETHER_S
        after (a big process takes a while to die), then it loads again. The deaths of other models that no other
        watcher took (none was free) are this watcher's next."""
        held: dict[str, InterProcessLock] = {}  # model -> its claim: the model's reload is this watcher's
        deaths: dict[str, list[tuple[Stub, int]]] = {}
        left: list[Stub] = []  # deaths of other models, left to other watchers
        started = time.monotonic()
        try:
            unloaded = self._unload(self._take(exited, held, left), deaths)
            while not self._stop.is_set() and (more := self._wait_for_exits(TOGETHER_S)):
                unloaded += self._unload(self._take(more, held, left), deaths)
            for model in unloaded:
                self._load(model, deaths[model], started)
        finally:
            for reloading in held.values():
                reloading.release()
        if left and not self._stop.is_set():
            self._recover(left)

    def _take(self, exited: list[Stub], held: dict[str, InterProcessLock],
              left: list[Stub]) -> dict[str, list[tuple[Stub, int]]]:
        """Of `exited`, the deaths this watcher handles, by model: a model whose claim another watcher holds is that
        watcher's (it watches every stub, so it also sees the deaths that follow); while this one holds a model,
        other models' deaths go to `left`; a death, once claimed, is never handled twice."""
        taken: dict[str, list[tuple[Stub, int]]] = {}
        for model in sorted({stub.model for stub in exited if death_status(stub.pid) is not None}):
            if held and model not in held:
                left.extend(s for s in exited if s.model == model)
                continue
            if model not in held and (reloading := self._model_claim(model)) is not None:
                held[model] = reloading
            if model not in held:
                continue
            for stub in (s for s in exited if s.model == model):
                status = death_status(stub.pid)
                death = claim(f"{self._claims}-death-{stub.pid}") if status is not None else None
                if death is not None:
                    self._handled.append(death)
                    taken.setdefault(model, []).append((stub, status))
        return taken

    def _unload(self, taken: dict[str, list[tuple[Stub, int]]],
                deaths: dict[str, list[tuple[Stub, int]]]) -> list[str]:
        """Says each death and unloads its model (so that Triton says not ready while it loads again); returns the
        models unloaded. `deaths` collects them."""
        unloaded = []
        for model, model_deaths in taken.items():
            first = model not in deaths  # else unloaded already: another of its processes died meanwhile
            deaths.setdefault(model, []).extend(model_deaths)
            for stub, status in model_deaths:
                events.emit("component_died", model=model, instance=stub.instance, stub_pid=stub.pid,
                            exit_status=status)
                self.log_error(f"watchdog: {stub.instance} (pid {stub.pid}) of {model} died (wait status {status})")
            if first:
                self.log_info(f"watchdog: reloading {model}; Triton reports it not ready until it is loaded")
                if self._control(model, "unloading", self.control.unload, model_deaths):
                    unloaded.append(model)
        return unloaded

    def _load(self, model: str, deaths: list[tuple[Stub, int]], started: float) -> None:
        if not self._control(model, "loading", self.control.load, deaths, said=model in self._failed):
            self._failed[model] = (time.monotonic() + RETRY_SECONDS, deaths)
            return
        self._failed.pop(model, None)
        seconds = time.monotonic() - started
        pids = [s.pid for s in server_stubs(self.server_pid) if s.model == model]
        for stub, _ in deaths:
            events.emit("component_restarted", model=model, instance=stub.instance, seconds=seconds, stub_pids=pids)
        self.log_info(f"watchdog: {model} reloaded in {seconds:.2f}s (stubs {pids})")

    def _retry_failed_loads(self) -> None:
        """Loads again each model whose load failed, every RETRY_SECONDS: a file fixed in the repository is picked
        up without a restart (Triton keeps the model UNAVAILABLE, and the server not ready, meanwhile)."""
        for model, (when, deaths) in list(self._failed.items()):
            if time.monotonic() < when or self._stop.is_set():
                continue
            reloading = self._model_claim(model)
            if reloading is None:  # another watcher is at it
                continue
            try:
                self.log_info(f"watchdog: loading {model} again after its failed load")
                self._load(model, deaths, time.monotonic())
            finally:
                reloading.release()

    def _control(self, model: str, doing: str, call: Callable[[str], object], deaths: list[tuple[Stub, int]],
                 said: bool = False) -> bool:
        """`call(model)`; a failure is logged, and recorded for each of the model's dead stubs unless `said`."""
        try:
            if not self.can_reload:
                raise RuntimeError(NO_RELOAD)
            call(model)
            return True
        except Exception as e:
            for stub, _ in [] if said else deaths:
                events.emit("component_restart_failed", model=model, instance=stub.instance, error=str(e))
            self.log_error(f"watchdog: {doing} {model} failed: {e}")
            return False
