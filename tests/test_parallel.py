"""Several devices per request on the CPU: Ulysses sequence parallelism over gloo process groups (2 and 4 ranks)
equals the one-process expert; a dying or hanging worker fails its step with a clear error and the group recovers;
the served CFG-parallel x Ulysses path on a real tritonserver gives the single-device video, places the two CFG
halves on two instances at once, survives a worker's death and still stops between steps when cancelled; the export
places every instance where the plan says."""

from __future__ import annotations

import functools
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tritonclient.utils import InferenceServerException

from clients import grpc_client
from export.model_config import parse_pbtxt
from export.options import ExportOptions
from export.repository import export_repository
from wan22_triton.components.orchestrator import ORCHESTRATOR_STREAM
from wan22_triton.operations import events
from wan22_triton.triton_models import triton_io
from wan22_triton.checkpoint import Family, read_checkpoint
from wan22_triton.engines.loading import build_expert
from wan22_triton.manifest import Manifest
from wan22_triton.parallel.plan import ParallelPlan
from wan22_triton.parallel.worker_group import GroupFailed, WorkerGroup

from .conftest import TEST_LIMITS, psnr
from .observed import delta, scrape, steps_run, wait_for_outcome

REQUEST = dict(prompt="a lighthouse at dusk", num_frames=5, height=32, width=48, num_inference_steps=4, seed=3)
FAIL_BOUND_S = 30.0  # a worker's death to the failed step; gloo sees the closed connection at once
# A group's timeout that only a hang reaches; it bounds the workers' start too, which the other tests' processes slow
HANG_TIMEOUT_S = 10


def _manifest(checkpoint: Path, chunks: int = ParallelPlan.ulysses_chunks) -> Manifest:
    return Manifest(model="transformer_high_noise", engine="torch", precision="fp32",
                    checkpoint=read_checkpoint(checkpoint), parallel=ParallelPlan(ulysses_chunks=chunks))


def _inputs(info) -> dict[str, torch.Tensor]:
    """A guided batch whose token count (3 x 3 x 5 = 45 patches) divides by neither 2 nor 4."""
    g = torch.Generator().manual_seed(0)
    return dict(
        hidden_states=torch.randn(2, info.in_channels, 3, 6, 10, generator=g),
        timestep=torch.tensor([900.0, 650.0]),
        encoder_hidden_states=torch.randn(2, info.text_len, info.text_dim, generator=g),
    )


def _group(checkpoint: Path, ranks: int, timeout_s: float = 60,
           chunks: int = ParallelPlan.ulysses_chunks) -> WorkerGroup:
    # the version folder's layout (`transformer/`) is the checkpoint's own: build_expert loads it from there
    build = functools.partial(build_expert, _manifest(checkpoint, chunks), checkpoint)
    return WorkerGroup("test_expert", [torch.device("cpu")] * ranks, build, timeout_s).start()


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    manifest = _manifest(tiny_checkpoint)
    model = build_expert(manifest, tiny_checkpoint, "cpu")
    inputs = _inputs(manifest.checkpoint)
    with torch.inference_mode():
        return inputs, model(**inputs, return_dict=False)[0]


# the tiny experts' 8 heads: per rank 4 (in 1, 2 or 3 uneven pieces), 2 (2 pieces of 1), 1 (one piece)
@pytest.mark.parametrize("ranks,chunks", [(2, 1), (2, 2), (2, 3), (4, 2), (8, 2)])
@pytest.mark.slow
def test_sequence_parallel_noise_prediction_equals_one_process(tiny_checkpoint, reference, ranks, chunks):
    inputs, expected = reference
    group = _group(tiny_checkpoint, ranks, chunks=chunks)
    try:
        out = group(**inputs, return_dict=False)[0]
    finally:
        group.shutdown()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert not any(w.is_alive() for w in group.workers)


@pytest.mark.parametrize("family", [Family.I2V_A14B, Family.TI2V_5B])
@pytest.mark.slow
def test_sequence_parallel_takes_the_image_families_experts(tmp_path, family):
    """I2V-A14B's experts (36 input channels) and TI2V-5B's transformer (a timestep per token) over two ranks equal
    one process."""
    from devtools.tiny_checkpoint import write_checkpoint

    checkpoint = write_checkpoint(tmp_path / family, family)
    manifest = _manifest(checkpoint)
    info = manifest.checkpoint
    inputs = _inputs(info)
    if info.expand_timesteps:  # [batch, tokens]: the first frame's tokens at 0, as with an image
        tokens = info.tokens(*inputs["hidden_states"].shape[2:])
        inputs["timestep"] = inputs["timestep"][:, None].repeat(1, tokens)
        inputs["timestep"][:, :tokens // 3] = 0
    with torch.inference_mode():
        expected = build_expert(manifest, checkpoint, "cpu")(**inputs, return_dict=False)[0]
    group = _group(checkpoint, 2)
    try:
        out = group(**inputs, return_dict=False)[0]
    finally:
        group.shutdown()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def _build_fp8_attention(manifest: Manifest, root: Path, device, group=None) -> torch.nn.Module:
    """The expert with the FP8 attention kernel on its self-attention (its CPU stand-in emulates cuDNN's FP8
    roundings), as fast_path installs it on a GPU; then Ulysses over `group`."""
    from diffusers import WanTransformer3DModel

    from wan22_triton.speed import fp8_attention, self_attention

    from wan22_triton.parallel import sequence_parallel
    from wan22_triton.engines.loading import load_component

    model = load_component(manifest, root, WanTransformer3DModel, "transformer", "transformer", device)
    self_attention.set_self_attention(model, fp8_attention.attention)
    if group is not None:
        sequence_parallel.enable(model, group, manifest.parallel.ulysses_chunks)
    return model


@pytest.mark.slow
def test_sequence_parallel_with_the_fp8_kernel_equals_one_process(tiny_checkpoint):
    """The fast tier's path: RoPE in float32 and the FP8 kernel run after the exchange (Q, K, V travel in the
    projections' dtype), and the result is the one-process result."""
    manifest = _manifest(tiny_checkpoint)
    inputs = _inputs(manifest.checkpoint)
    with torch.inference_mode():
        expected = _build_fp8_attention(manifest, tiny_checkpoint, "cpu")(**inputs, return_dict=False)[0]
    build = functools.partial(_build_fp8_attention, manifest, tiny_checkpoint)
    group = WorkerGroup("test_expert", [torch.device("cpu")] * 2, build, 60).start()
    try:
        out = group(**inputs, return_dict=False)[0]
    finally:
        group.shutdown()
    # Not bit for bit: the kernel's per-tensor FP8 scales come from each piece of a rank's heads, not from all heads
    # (measured: relative L2 0.0018, cosine 0.999998); a RoPE on the wrong rows is off by far more.
    rel_l2 = float((out - expected).norm() / expected.norm())
    cosine = float(torch.nn.functional.cosine_similarity(out.flatten(), expected.flatten(), dim=0))
    assert rel_l2 < 0.01 and cosine >= 0.9999, (rel_l2, cosine)


def _compiled_rank(rank: int, checkpoint: Path, port: int, out_dir: Path) -> None:
    """One rank of a regionally compiled Ulysses forward over 2 gloo processes, through fast_path as the served
    expert compiles; rank 0 saves the output and the order of the compiled block's collectives and attention."""
    import torch.distributed as dist
    from diffusers import WanTransformer3DModel
    from torch._inductor.utils import run_and_get_code

    from wan22_triton.speed.fast_path import optimize_transformer
    from wan22_triton.engines.loading import load_component
    from wan22_triton.parallel.worker_group import rendezvous
    from wan22_triton.manifest import SpeedOptions

    dist.init_process_group("gloo", store=rendezvous(port, 2, 300), rank=rank, world_size=2)
    manifest = _manifest(checkpoint)
    model = load_component(manifest, checkpoint, WanTransformer3DModel, "transformer", "transformer", "cpu")
    optimize_transformer(model, SpeedOptions(compile="regional"), log=lambda _: None,
                         sequence_group=dist.group.WORLD, ulysses_chunks=2)
    with torch.inference_mode():
        out, codes = run_and_get_code(lambda: model(**_inputs(manifest.checkpoint), return_dict=False)[0])
    if rank == 0:
        block = next(c for c in codes if "all_to_all_single" in c)
        calls = [line.strip() for line in block.split("def call(")[1].splitlines() if not line.strip().startswith("#")]
        events_in_order = [("exchange" if "all_to_all_single.default(" in c else "wait" if "wait_tensor" in c
                            else "attention") for c in calls
                           if "all_to_all_single.default(" in c or "wait_tensor" in c
                           or re.match(r"buf\d+ = torch.ops.aten._scaled_dot_product\w*.default\(", c)]
        torch.save({"out": out, "order": events_in_order}, out_dir / "rank0.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_compiled_ulysses_sends_every_piece_before_attending_and_equals_one_process(tiny_checkpoint, reference,
                                                                                  tmp_path):
    """The compiled block (Inductor) keeps the overlap: both pieces' Q/K/V exchanges go out before the first
    attention, the second is waited for only after it, the first piece's output travels during the second's
    attention; and the noise prediction is the one-process one."""
    from torch.multiprocessing import spawn

    from wan22_triton.parallel.worker_group import rendezvous

    inputs, expected = reference
    store = rendezvous(0, 2, 300)  # held here while the ranks join it
    spawn(_compiled_rank, args=(tiny_checkpoint, store.port, tmp_path), nprocs=2)
    saved = torch.load(tmp_path / "rank0.pt")
    torch.testing.assert_close(saved["out"], expected, rtol=1e-4, atol=1e-5)
    # self-attention's 2 pieces, then cross-attention (no exchange)
    assert saved["order"] == ["exchange", "exchange", "wait", "attention", "exchange", "wait", "attention",
                              "exchange", "wait", "wait", "attention"], saved["order"]


@pytest.mark.slow
def test_worker_death_fails_the_step_then_the_group_recovers(tiny_checkpoint, reference):
    inputs, expected = reference
    group = _group(tiny_checkpoint, 2)
    try:
        first_pid = group.workers[0].pid
        # Killed while idle: the next call rebuilds the group first and succeeds.
        os.kill(first_pid, signal.SIGKILL)
        group.workers[0].join(10)
        torch.testing.assert_close(group(**inputs, return_dict=False)[0], expected, rtol=1e-5, atol=1e-6)
        assert group.workers[0].pid != first_pid
        # Killed mid-step (stopped first so that the step is surely under way): the step fails, naming the rank.
        worker = group.workers[0]
        os.kill(worker.pid, signal.SIGSTOP)
        killer = threading.Timer(1.0, os.kill, (worker.pid, signal.SIGKILL))
        killer.start()
        started = time.monotonic()
        with pytest.raises(GroupFailed, match=r"rank 1 \(cpu, pid \d+\) exited with code -9"):
            group(**inputs, return_dict=False)
        killer.join()
        assert time.monotonic() - started < FAIL_BOUND_S
        torch.testing.assert_close(group(**inputs, return_dict=False)[0], expected, rtol=1e-5, atol=1e-6)
    finally:
        group.shutdown()


@pytest.mark.slow
def test_a_hanging_worker_times_out_the_step(tiny_checkpoint, reference):
    inputs, expected = reference
    group = _group(tiny_checkpoint, 2, timeout_s=HANG_TIMEOUT_S)
    try:
        os.kill(group.workers[0].pid, signal.SIGSTOP)  # alive but never answers: only the timeout ends the step
        started = time.monotonic()
        with pytest.raises(GroupFailed, match="sequence-parallel step failed"):
            group(**inputs, return_dict=False)
        assert time.monotonic() - started < HANG_TIMEOUT_S + FAIL_BOUND_S
        torch.testing.assert_close(group(**inputs, return_dict=False)[0], expected, rtol=1e-5, atol=1e-6)
    finally:
        group.shutdown()


# -- served -------------------------------------------------------------------------------------------------------

PLAN = ParallelPlan(cfg_parallel=2, ulysses=2)


@pytest.fixture(scope="module")
def parallel_server(served):
    return served(ExportOptions(limits=TEST_LIMITS, parallel=PLAN))


def test_parallel_video_equals_the_single_device_video(parallel_server, torch_server):
    single = grpc_client.generate(torch_server.grpc_url, REQUEST)["video"]
    first = grpc_client.generate(parallel_server.grpc_url, REQUEST)["video"]
    offset = events.end_offset(parallel_server.events_file)
    out = grpc_client.generate(parallel_server.grpc_url, REQUEST)
    assert out["video"].shape == single.shape
    # measured: equal (inf dB) on the CPU; the Ulysses pieces returned to the wrong ranks: 44.5 dB
    assert psnr(out["video"], single) >= 60.0
    assert np.array_equal(out["video"], first)
    # Every guided step: two forwards of one item each, on two different expert instances, at the same time. (Not
    # in the first request: here every instance is on "cpu", where first calls at a shape go one at a time.) At the
    # same time for most steps: a forward takes ~20 ms here, and on two busy cores the second call of a step can
    # begin a moment after the first ended; calls made one after the other never overlap.
    forwards = [e for e in events.read_events(parallel_server.events_file, offset) if e["event"] == "expert_forward"]
    assert len(forwards) == 2 * REQUEST["num_inference_steps"]
    overlapping = 0
    for a, b in zip(forwards[::2], forwards[1::2]):
        assert a["batch"] == b["batch"] == 1 and a["model"] == b["model"] and a["pid"] != b["pid"]
        overlapping += a["started"] < b["time"] and b["started"] < a["time"]
    assert overlapping > REQUEST["num_inference_steps"] // 2, forwards


def test_each_expert_instance_drives_a_group_of_two(parallel_server):
    started = [e for e in events.read_events(parallel_server.events_file) if e["event"] == "sequence_group_started"]
    # 2 experts x 2 CFG instances, each with one worker process
    assert len(started) == 4 and all(len(e["devices"]) == PLAN.ulysses and len(e["workers"]) == 1 for e in started)


def test_worker_death_mid_request_fails_it_clearly_then_serves(parallel_server):
    groups = [e for e in events.read_events(parallel_server.events_file) if e["event"] in
              ("sequence_group_started",)]
    workers = {pid for e in groups for pid in e["workers"]}
    progress: list[dict] = []

    def kill_workers_after_first_step(p: dict) -> None:
        progress.append(p)
        if len(progress) == 1:
            for pid in workers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # a group rebuilt earlier

    started = time.monotonic()
    with pytest.raises(InferenceServerException, match="sequence-parallel step failed.*exited with code -9"):
        grpc_client.generate_stream(parallel_server.grpc_url, {**REQUEST, "num_inference_steps": 30},
                                    kill_workers_after_first_step, timeout=120)
    assert time.monotonic() - started < FAIL_BOUND_S + 60
    assert len(progress) < 30
    # The next requests rebuild the groups and serve the same video as before.
    again = grpc_client.generate(parallel_server.grpc_url, REQUEST)["video"]
    assert np.array_equal(again, grpc_client.generate(parallel_server.grpc_url, REQUEST)["video"])


def test_cancel_stops_a_parallel_generation_between_steps(parallel_server):
    before, steps = scrape(parallel_server.metrics_url), 45
    with pytest.raises(InferenceServerException) as err:
        grpc_client.generate_stream(parallel_server.grpc_url, {**REQUEST, "num_inference_steps": steps},
                                    cancel_after_steps=2)
    assert err.value.status() == "StatusCode.CANCELLED"
    # The server's own count (the client raises CANCELLED itself): cancelled after a few of its steps.
    after = wait_for_outcome(parallel_server.metrics_url, before, ORCHESTRATOR_STREAM, "cancelled")
    assert delta(before, after, "wan22_requests_total", model=ORCHESTRATOR_STREAM, outcome="cancelled") == 1
    assert 2 <= steps_run(before, after, ORCHESTRATOR_STREAM) <= steps // 3
    assert grpc_client.generate(parallel_server.grpc_url, REQUEST)["video"].shape == (5, 32, 48, 3)


# -- placement ------------------------------------------------------------------------------------------------------

def test_replicas_keep_each_request_on_its_own_replica(served, torch_server):
    """Two replicas, two concurrent requests, twice: each generation holds a different replica, and every expert
    call of a generation goes to that replica's version (Triton alone would place each call on any idle instance);
    the videos are the single pipeline's."""
    from concurrent.futures import ThreadPoolExecutor

    server = served(ExportOptions(limits=TEST_LIMITS, parallel=ParallelPlan(replicas=2)))
    events_file = server.events_file
    single = grpc_client.generate(torch_server.grpc_url, REQUEST)["video"]
    grpc_client.generate(server.grpc_url, REQUEST)  # first calls at this shape: one at a time on the CPU
    with ThreadPoolExecutor(2) as pool:
        for _ in range(2):
            offset = events.end_offset(events_file)
            videos = list(pool.map(lambda _: grpc_client.generate(server.grpc_url, REQUEST)["video"], (0, 1)))
            assert all(np.array_equal(v, single) for v in videos)
            seen = events.read_events(events_file, offset)
            chosen = [e["replica"] for e in seen if e["event"] == "generation_replica"]
            forwards = [e["version"] for e in seen if e["event"] == "expert_forward"]
            steps = REQUEST["num_inference_steps"]
            # both replicas busy at once: one generation each, all of its forwards on its version
            assert sorted(chosen) == [0, 1] and sorted(forwards) == [1] * steps + [2] * steps, (chosen, forwards)


def _instance_groups(repo: Path, model: str) -> list[tuple[str, int, list[int]]]:
    config = parse_pbtxt((repo / model / "config.pbtxt").read_text())
    kind = {0: "KIND_AUTO", 1: "KIND_GPU", 2: "KIND_CPU", 3: "KIND_MODEL"}
    return [(kind[g.kind], g.count, list(g.gpus)) for g in config.instance_group]


def _versions(repo: Path, model: str) -> list[int]:
    """The versions a model's config serves; each folder is version 1's (the same files)."""
    versions = list(parse_pbtxt((repo / model / "config.pbtxt").read_text()).version_policy.specific.versions)
    assert all((repo / model / str(v)).resolve() == (repo / model / "1").resolve() for v in versions)
    return versions


def test_eight_gpus_as_two_replicas_of_cfg_2_x_ulysses_2(tmp_path, tiny_checkpoint):
    plan = ParallelPlan(replicas=2, cfg_parallel=2, ulysses=2)
    export_repository(tiny_checkpoint, tmp_path, ExportOptions(device="gpu", precision="bf16", parallel=plan),
                      log=lambda _: None)
    # a version per replica, whose instances the model places itself (KIND_MODEL), each Ulysses lead driving GPU
    # g and g + 1: replica 0 on GPUs 0-3, replica 1 on 4-7
    for expert in ("transformer_high_noise", "transformer_low_noise"):
        assert _instance_groups(tmp_path, expert) == [("KIND_MODEL", 2, [])] and _versions(tmp_path, expert) == [1, 2]
    for model in ("text_encoder", "vae_decoder"):
        assert _instance_groups(tmp_path, model) == [("KIND_MODEL", 1, [])] and _versions(tmp_path, model) == [1, 2]
    for model in ("wan22_t2v", "wan22_t2v_stream"):
        assert _instance_groups(tmp_path, model) == [("KIND_GPU", 1, [0, 4])]  # one per replica
    # where each version's instances go: what base.ComponentModel computes from Triton's args
    expert_devices = {}
    for version in (1, 2):
        for index in (0, 1):
            args = {"model_instance_kind": "MODEL", "model_version": str(version),
                    "model_instance_name": f"transformer_low_noise_0_{index}"}
            expert_devices[version, index] = triton_io.torch_device(
                args, lambda v: plan.replica_devices(v - 1, expert=True))
    assert expert_devices == {(1, 0): "cuda:0", (1, 1): "cuda:2", (2, 0): "cuda:4", (2, 1): "cuda:6"}
    assert [plan.replica_devices(r, expert=False) for r in (0, 1)] == [[0], [4]]


def test_cpu_plan_counts_instances(tmp_path, tiny_checkpoint):
    export_repository(tiny_checkpoint, tmp_path, ExportOptions(parallel=ParallelPlan(replicas=3, cfg_parallel=2)),
                      log=lambda _: None)
    assert _instance_groups(tmp_path, "transformer_low_noise") == [("KIND_CPU", 2, [])]  # per version (replica)
    assert _versions(tmp_path, "transformer_low_noise") == [1, 2, 3]
    assert _instance_groups(tmp_path, "text_encoder") == [("KIND_CPU", 1, [])]
    assert _instance_groups(tmp_path, "wan22_t2v") == [("KIND_CPU", 3, [])]


@pytest.mark.parametrize("plan, options, message", [
    (ParallelPlan(ulysses=3), {}, r"ulysses 3 must divide the experts' \d+ attention heads"),
    (ParallelPlan(cfg_parallel=3), {}, "cfg_parallel 1 or 2"),
    (ParallelPlan(ulysses=2, ulysses_chunks=0), {}, "ulysses_chunks must be >= 1"),
    (ParallelPlan(ulysses=2), {"engine": "onnx"}, "ulysses needs engine 'torch'"),
    (ParallelPlan(replicas=2), {"low_memory": True, "device": "gpu", "precision": "bf16"}, "low_memory"),
])
def test_plans_that_cannot_be_served_are_refused_at_export(tmp_path, tiny_checkpoint, plan, options, message):
    with pytest.raises(ValueError, match=message):
        export_repository(tiny_checkpoint, tmp_path, ExportOptions(parallel=plan, **options), log=lambda _: None)
