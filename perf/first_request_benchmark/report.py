"""results.json and table.md of a first-request run."""

from __future__ import annotations

import json
from typing import Any

from perf.gpu_benchmark.report import cell

from .plan import MODES


def render_table(results: dict[str, Any]) -> str:
    head = ("| tier | mode | export s | start->READY s | start peak GPU GiB | compiles before / after READY | size "
            "| first e2e s | warm e2e s | first/warm | alternating % | peak GPU GiB | PSNR vs other mode dB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for tier, runs in results["runs"].items():
        for mode in MODES:
            run = runs.get(mode)
            if not run:
                continue
            if not run.get("per_size"):
                lines.append(f"| {tier} | {mode} | {' '.join(str(run.get('status')).split())[:160]} |" + " |" * 10)
                continue
            for key, e in run["per_size"].items():
                p = runs.get("parity", {}).get(key, {}).get("psnr_db")
                lines.append(
                    f"| {tier} | {mode} | {cell(run.get('export', {}).get('wall_s'), '.1f')} "
                    f"| {cell(run.get('ready_s'), '.1f')} | {cell(run.get('peak_gpu_memory_start_gb'), '.1f')} "
                    f"| {run.get('warmup', {}).get('expert_compiled', '-')} / {e['expert_compiled']} | {key} "
                    f"| {e['first_e2e_s']:.2f} | {cell(e['warm_e2e_s'], '.2f')} "
                    f"| {cell(e.get('first_request_ratio'), '.3f')} "
                    f"| {cell(e.get('alternating_overhead_pct'), '+.1f')} | {cell(e['peak_gpu_memory_gb'], '.1f')} "
                    f"| {cell(p, '.1f')} |")
    return "\n".join(lines)


def save(results: dict[str, Any], args) -> None:
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (args.out_dir / "table.md").write_text(render_table(results) + "\n")

