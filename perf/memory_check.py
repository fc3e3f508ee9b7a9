"""The GPU memory budget (wan22_triton.memory.budget) on a GPU host: for each tier, the full A14B architecture with
random weights is exported and started; a repository the model says cannot fit must be refused at load, one that
fits must come READY, serve a 2-step 480x832x81 request (its NVML peak against the prediction) and refuse a
161x1280x1280 request as INVALID_ARG.

    source gpu-bundle/activate.sh && OUT=/tmp/res/memory_budget python3 -m perf.memory_check bf16_lora,bf16,fp8_eager
"""
import json, os, subprocess, sys, time
from dataclasses import replace
from pathlib import Path

from clients import grpc_client
from devtools.tiny_lora import write_random_lora
from export.loras import LoraSource
from export.options import ExportOptions
from export.repository import export_repository
from perf.gpu_benchmark.gpu_monitor import GpuMemoryPeak
from perf.gpu_benchmark.measure import stub_env_bin
from perf.gpu_checkpoint import write_configs_checkpoint
from server.triton_server import TritonServer
from server.tritonserver_install import TritonLaunchError
from wan22_triton.request.contract import HEIGHT, NUM_FRAMES, WIDTH
from wan22_triton.options import Attention, Device, Precision, Quantization, SpeedOptions

REQ = dict(prompt="a red panda", num_frames=81, height=480, width=832, num_inference_steps=2, seed=1)


def main(tiers: list[str]) -> None:
    out = Path(os.environ["OUT"])
    ck = write_configs_checkpoint("/tmp/a14b")
    lora = Path("/tmp/lora.safetensors")
    if not lora.exists():
        write_random_lora(json.loads((ck / "transformer" / "config.json").read_text()), lora, 64, 1)
    base = ExportOptions(device=Device.GPU, precision=Precision.BF16, random_weights_seed=1234)
    fp8 = replace(base, speed=SpeedOptions(quantization=Quantization.FP8_ROWWISE, attention=Attention.FP8_CUDNN))
    configs = {"bf16_lora": replace(base, lora=(LoraSource("l", (str(lora),)),)), "bf16": base, "fp8_eager": fp8}
    res = {"tool": "perf.memory_check", "workload": {**{k: REQ[k] for k in (NUM_FRAMES, HEIGHT, WIDTH)}, "steps": 2},
           "card": subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                  capture_output=True, text=True).stdout.strip(),
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": os.environ.get("WAN22_COMMIT")}
    for name in tiers:
        repo, lines = Path(f"/tmp/r-{name}"), []
        export_repository(ck, repo, configs[name], log=lines.append)
        row = {"export_log": [l.strip() for l in lines if "GPU memory" in l]}
        srv = TritonServer(repo, log_file=out / f"{name}.log", startup_timeout=600, path_first=[stub_env_bin()],
                           extra_args=[f"--backend-directory={os.environ['TRITON_BACKENDS']}"])
        t0 = time.monotonic()
        try:
            with GpuMemoryPeak() as start_peak:
                srv.start()
            row.update(status="READY", ready_s=time.monotonic() - t0, start_peak_gib=start_peak.peak_gb,
                       start_processes=start_peak.processes_at_peak)
            with GpuMemoryPeak() as peak:
                t1 = time.monotonic()
                grpc_client.generate(srv.grpc_url, REQ)
            row.update(request_s=time.monotonic() - t1, request_peak_gib=peak.peak_gb, request_processes=peak.processes_at_peak)
            try:
                grpc_client.generate(srv.grpc_url, {**REQ, NUM_FRAMES: 161, HEIGHT: 1280, WIDTH: 1280})
                row["oversized"] = "served"
            except Exception as e:
                row["oversized"] = str(e)[:600]
            srv.stop()
        except TritonLaunchError as e:
            row.update(status="refused", seconds=time.monotonic() - t0, error=str(e).splitlines()[0][:300], code=srv.returncode)
        row["log"] = [l.strip()[:700] for l in (out / f"{name}.log").read_text().splitlines() if "does not fit" in l][:2]
        time.sleep(3)
        row["stubs_left"] = subprocess.run("pgrep -fc triton_python_backend_stub", shell=True, capture_output=True,
                                           text=True).stdout.strip()
        res[name] = row
        print(json.dumps(row)[:2500], flush=True)
        (out / "memory_check.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(sys.argv[1].split(","))
