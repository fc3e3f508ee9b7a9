"""The export of one tier x mode, in its own process with its own empty Inductor cache, and the record that lets a
later `--phases serve` (another process) serve it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from perf.gpu_benchmark import ROOT, log
from wan22_triton.operations import events
from wan22_triton.options import Device

from .plan import EXPERT_NAMES, size_key
from .report import save

INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
# CPU dry runs: Inductor compiles in-process, no worker pool; on a small loaded host the pool starved the expert
# stub's health check during a just-in-time compile ("Stub process ... is not healthy").
CPU_ENV = {"TORCHINDUCTOR_COMPILE_THREADS": "1"}


def write_shape_spec(args) -> tuple[Path, list[str]]:
    """A spec of exactly --sizes (export/shape_spec.json's format); returns it and the sizes it serves (the spec is
    frames x resolutions, so mixed frame counts serve their cross product)."""
    frames = sorted({f for _, _, f in args.size_list})
    resolutions = list(dict.fromkeys((h, w) for h, w, _ in args.size_list))
    spec = {"num_frames": frames, "resolutions": [list(r) for r in resolutions],
            "max_batch": 2 if args.cfg == "on" else 1}
    path = args.workdir / "shape_spec.json"
    path.write_text(json.dumps(spec, indent=2) + "\n")
    served = [size_key((h, w, f)) for f in frames for h, w in resolutions]
    if len(served) > len(args.size_list):
        extra = sorted(set(served) - set(map(size_key, args.size_list)))
        log(f"the spec also serves (and the export compiles) {extra}")
    return path, served


def export_child(payload: dict[str, Any]) -> None:
    """The export, in its own process (its own Inductor cache and CUDA context): a tier of variants.py, ENGINE=torch,
    random weights, the given shape spec, the mode's warm-up (compile artifacts, --warmup or none)."""
    from export.repository import export_repository
    from perf.gpu_benchmark.variants import VARIANTS, export_options

    opts = export_options(VARIANTS[payload["tier"]], payload["device"], payload["precision"],
                          payload["weights_seed"], shape_spec=payload["shape_spec"],
                          compile_artifacts=payload["mode"] == "artifacts", warmup=payload["mode"] == "warmup")
    export_repository(payload["checkpoint"], payload["repo"], opts, log=lambda m: print(m, flush=True))


def export_repo(tier: str, mode: str, checkpoint: Path, spec: Path, args) -> tuple[Path, dict[str, Any]]:
    repo = args.workdir / f"repo-{tier}-{mode}"
    shutil.rmtree(repo, ignore_errors=True)
    cache = fresh_dir(args.workdir / f"inductor-export-{tier}-{mode}")
    payload = {"tier": tier, "device": args.device, "precision": args.precision, "weights_seed": args.weights_seed,
               "shape_spec": str(spec), "mode": mode, "checkpoint": str(checkpoint),
               "repo": str(repo)}
    code = ("import json, sys; from perf.first_request_benchmark.export_phase import export_child; "
            "export_child(json.loads(sys.argv[1]))")
    out: dict[str, Any] = {"compile_s": {}, "component_s": {}}
    events_file = args.out_dir / f"events-export-{tier}-{mode}.jsonl"  # the export's progress, structured
    events_file.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(args.out_dir / f"export-{tier}-{mode}.log", "w") as export_log:
        proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(payload)], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, **device_env(args), INDUCTOR_CACHE_ENV: str(cache),
                                     events.EVENTS_FILE_ENV: str(events_file)})
        assert proc.stdout is not None
        for line in proc.stdout:  # kept for people; the numbers come from the events
            export_log.write(line)
            if ": compiled " in line:
                log(f"export| {line.strip()}")
        exit_code = proc.wait()
    out["wall_s"] = time.perf_counter() - t0
    for event in events.read_events(events_file):
        if event["event"] == "export_point_compiled":
            out["compile_s"].setdefault(event["model"], {})[event["point"]] = event["seconds"]
        elif event["event"] == "export_component_written":
            out["component_s"][event["model"]] = event["seconds"]
    if exit_code != 0:
        raise RuntimeError(f"export failed with exit code {exit_code} (see {args.out_dir}/export-{tier}-{mode}.log)")
    from wan22_triton.speed import compile_cache

    out["artifacts_bytes"] = {
        e: (repo / e / "1" / compile_cache.FOLDER / compile_cache.ARTIFACTS).stat().st_size
        for e in EXPERT_NAMES if (repo / e / "1" / compile_cache.FOLDER / compile_cache.ARTIFACTS).exists()
    }
    out["warmup_samples"] = {e: warmup_samples(repo / e) for e in EXPERT_NAMES}
    return repo, out


def warmup_samples(model_dir: Path) -> list[str]:
    """The model_warmup samples of a model's config.pbtxt (none for a repository without artifacts)."""
    from export.model_config import parse_pbtxt

    return [w.name for w in parse_pbtxt((model_dir / "config.pbtxt").read_text()).model_warmup]


def device_env(args) -> dict[str, str]:
    return CPU_ENV if args.device == Device.CPU else {}


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path



def export_phase(tier: str, mode: str, checkpoint: Path, spec: Path, args, results: dict[str, Any]) -> None:
    """Export, and a record beside the repository so that a later `--phases serve` (another process, e.g. the next
    10-minute command on the GPU host) can serve it."""
    run = results["runs"][tier][mode]
    run["status"] = "exporting"
    log(f"{tier}/{mode}: export{ {'artifacts': ' with compile artifacts', 'warmup': ' with --warmup'}.get(mode, '')}")
    repo, run["export"] = export_repo(tier, mode, checkpoint, spec, args)
    record_path(tier, mode, args).write_text(json.dumps({"fingerprint": fingerprint(tier, mode, args),
                                                         "export": run["export"]}, indent=2))
    run["status"] = "exported"
    log(f"{tier}/{mode}: export {run['export']['wall_s']:.1f}s; warm-up samples "
        f"{ {e: len(s) for e, s in run['export']['warmup_samples'].items()} }")
    save(results, args)


def record_path(tier: str, mode: str, args) -> Path:
    return args.workdir / f"repo-{tier}-{mode}.export.json"


def fingerprint(tier: str, mode: str, args) -> dict[str, Any]:
    """What must be equal for an exported repository to be served by a later `--phases serve`."""
    return {"tier": tier, "mode": mode, "sizes": [size_key(s) for s in args.size_list], "cfg": args.cfg,
            "device": args.device, "precision": args.precision, "preset": args.preset, "layers": args.layers,
            "weights_seed": args.weights_seed}


def exported_repo(tier: str, mode: str, args, run: dict[str, Any]) -> Path:
    """The repository an earlier `--phases export` made in --workdir, for the same workload."""
    repo, path = args.workdir / f"repo-{tier}-{mode}", record_path(tier, mode, args)
    record = json.loads(path.read_text()) if path.exists() else {}
    if not repo.is_dir() or record.get("fingerprint") != fingerprint(tier, mode, args):
        raise RuntimeError(f"no export of {tier}/{mode} for this workload in {args.workdir} (run --phases export "
                           f"with the same flags first); record: {record.get('fingerprint')}")
    run["export"] = record["export"]
    return repo

