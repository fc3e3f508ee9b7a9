"""What a run reports: derived rates and speed-ups, the tables (table.md, printed), the chart and results.json.

results.json keeps one key layout across runs so that the stored results under perf/results/gpu stay comparable.
The transformer's TFLOP/s are perf/flops.py's FLOPs of one CFG step over the mean step time, and their share of the
card's BF16 matmul rate (the baseline's `matmul_bf16_tflops`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from wan22_triton.components.expert import TRANSFORMER_HIGH_NOISE, TRANSFORMER_LOW_NOISE
from wan22_triton.components.text_encoder import TEXT_ENCODER
from wan22_triton.request.contract import HEIGHT, NUM_FRAMES, WIDTH

from . import log
from .variants import EXPERTS


def add_derived(results: dict[str, Any]) -> None:
    """Per row: mean step, transformer TFLOP/s (and % of the matmul rate), speed-ups against the baseline."""
    base = results.get("baseline", {})
    flops = results["workload"]["transformer_step_pflop"] * 1e15
    matmul = base.get("matmul_bf16_tflops")
    for row in [base, *results["variants"].values(), results.get("baseline_repeat", {})]:
        if row.get("status") != "ok":
            continue
        total_steps = sum(row["steps"].values())
        if total_steps:
            row["step_mean_s"] = row["denoise_compute_s"] / total_steps
            row["transformer_tflops"] = flops / row["step_mean_s"] / 1e12
            if matmul:
                row["transformer_pct_of_matmul"] = 100 * row["transformer_tflops"] / matmul
        if base.get("status") == "ok" and row is not base:
            row["speedup"] = base["e2e_s"] / row["e2e_s"]
            row["step_speedup"] = base["step_mean_s"] / row["step_mean_s"]
    for row in results["variants"].values():  # several GPUs against the same tier on one
        one_gpu = results["variants"].get(row.get("parallel", {}).get("one_gpu"), {})
        if row.get("status") == "ok" and one_gpu.get("status") == "ok" and "step_mean_s" in row:
            row["step_speedup_vs_1gpu"] = one_gpu["step_mean_s"] / row["step_mean_s"]
            row["e2e_speedup_vs_1gpu"] = one_gpu["e2e_s"] / row["e2e_s"]


def cell(value: Any, fmt: str) -> str:
    """A table cell: the value formatted, "-" when missing."""
    return "-" if value is None else format(value, fmt)


def render_table(results: dict[str, Any]) -> str:
    head = ("| system | end-to-end s | speed-up | text enc s | high-noise step s | low-noise step s | VAE decode s "
            "| transformer TFLOP/s (% of matmul) | peak GPU GiB | Triton overhead s (%) | PSNR dB | SSIM "
            "| noise-pred cos |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    rows = [("baseline", results.get("baseline", {}))] + list(results["variants"].items())
    if results.get("baseline_repeat"):
        rows.append(("baseline_repeat", results["baseline_repeat"]))
    for key, row in rows:
        label = row.get("label", key)
        if row.get("status") != "ok":
            status = " ".join(str(row.get("status", "not run")).split())[:160].replace("|", "/")
            lines.append(f"| {label} | {status} |" + " |" * 11)
            continue
        step = row.get("step_s", {})
        tflops = row.get("transformer_tflops")
        pct = row.get("transformer_pct_of_matmul")
        parity = row.get("parity", {})
        overhead = (f"{row['triton_overhead_s']:.2f} ({row['triton_overhead_pct']:.1f}%)"
                    if "triton_overhead_s" in row else f"({row.get('other_s', 0):.2f} other)")
        lines.append(
            f"| {label} | {row['e2e_s']:.2f} | {'1.000' if key == 'baseline' else cell(row.get('speedup'), '.3f')}x "
            f"| {cell(row.get('text_encoder_s'), '.3f')} | {cell(step.get(TRANSFORMER_HIGH_NOISE), '.3f')} "
            f"| {cell(step.get(TRANSFORMER_LOW_NOISE), '.3f')} | {cell(row.get('vae_decode_s'), '.2f')} "
            f"| {cell(tflops, '.0f')}{f' ({pct:.0f}%)' if pct else ''} | {cell(row.get('peak_gpu_memory_gb'), '.1f')} "
            f"| {overhead} | {cell(parity.get('psnr_db'), '.1f')} | {cell(parity.get('ssim'), '.4f')} "
            f"| {cell(parity.get('noise_pred_cosine'), '.6f')} |"
        )
    return "\n".join(lines)


def _vs_text(vs: dict[str, Any] | None) -> str:
    if not vs:
        return "-"
    return "identical" if vs["equal"] else f"PSNR {vs['psnr_db']:.1f} dB, max diff {vs['max_abs_diff']}"


def render_low_memory_table(results: dict[str, Any]) -> str:
    """Memory and swap costs per variant (rows with the measured request's peak, i.e. this script's newer runs)."""
    rows = [(k, r) for k, r in results["variants"].items()
            if r.get("status") == "ok" and "peak_gpu_memory_request_gb" in r]
    if not rows:
        return ""
    ref = results["variants"].get(results.get("meta", {}).get("reference_variant", ""), {})
    head = ("| system | end-to-end s | time vs reference | peak GPU GiB, whole run | peak GPU GiB, measured request "
            "| GPU GiB after request | text-encoder load s | expert loads s (GiB each) | releases s (expert) "
            "| step s high / low (without swaps) | video vs reference |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for key, r in rows:
        swaps = r.get("swaps", {})
        te = swaps.get(TEXT_ENCODER, {})
        expert_loads = [
            f"{e.split('_')[1]} {', '.join(f'{v:.2f}' for v in swaps[e]['load_s'])} ({swaps[e].get('gb', 0):.1f})"
            for e in EXPERTS if swaps.get(e, {}).get("load_s")
        ]
        releases = [f"{e.split('_')[1]} {', '.join(f'{v:.2f}' for v in swaps[e]['release_s'])}"
                    for e in EXPERTS if swaps.get(e, {}).get("release_s")]
        vs = r.get("vs_reference")
        bare = r.get("step_s_without_swaps") or r.get("step_s", {})
        step = " / ".join(f"{r['step_s'][e]:.3f} ({bare[e]:.3f})" for e in EXPERTS if e in r.get("step_s", {}))
        ratio = (f"{r['e2e_s'] / ref['e2e_s']:.3f}x" if ref.get("status") == "ok" and ref is not r else "-")
        lines.append(
            f"| {r['label']} | {r['e2e_s']:.2f} | {ratio} | {cell(r.get('peak_gpu_memory_gb'), '.1f')} "
            f"| {cell(r.get('peak_gpu_memory_request_gb'), '.1f')} | {cell(r.get('gpu_used_after_request_gb'), '.1f')} "
            f"| {', '.join(f'{v:.2f}' for v in te.get('load_s', [])) or '-'} | {'; '.join(expert_loads) or '-'} "
            f"| {'; '.join(releases) or '-'} | {step or '-'} "
            f"| {_vs_text(vs)} |"
        )
    return "\n".join(lines)


def write_chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [results.get("baseline", {})] + list(results["variants"].values())
    rows = [r for r in rows if r.get("status") == "ok"]
    if not rows:
        return
    def expert(name: str):
        return lambda r: r["step_s"].get(name, 0) * r["steps"].get(name, 0)

    parts = [
        ("text encoder", lambda r: r.get("text_encoder_s") or 0, "#8da0cb"),
        ("high-noise expert", expert(TRANSFORMER_HIGH_NOISE), "#e78ac3"),
        ("low-noise expert", expert(TRANSFORMER_LOW_NOISE), "#fc8d62"),
        ("VAE decode", lambda r: r.get("vae_decode_s") or 0, "#66c2a5"),
        ("other (Triton/BLS, scheduler, I/O)", lambda r: r["e2e_s"] - r["component_compute_s"], "#b3b3b3"),
    ]
    fig, ax = plt.subplots(figsize=(11, 1.6 + 0.6 * len(rows)))
    labels = [r["label"] for r in rows][::-1]
    left = np.zeros(len(rows))
    for name, value, color in parts:
        widths = np.array([max(value(r), 0.0) for r in rows][::-1])
        ax.barh(labels, widths, left=left, color=color, label=name)
        left += widths
    for i, r in enumerate(rows[::-1]):
        note = f"{r['e2e_s']:.1f} s" + (f"  ({r['speedup']:.2f}x)" if "speedup" in r else "")
        ax.text(r["e2e_s"], i, "  " + note, va="center")
    w = results["workload"]
    ax.set_xlabel("seconds, end to end (one request)")
    ax.set_xlim(0, max(r["e2e_s"] for r in rows) * 1.25)
    ax.set_title(f"Wan2.2-T2V-A14B (random weights) {w[HEIGHT]}x{w[WIDTH]}x{w[NUM_FRAMES]}, "
                 f"{w['steps']} steps, CFG, {results['meta'].get('gpu', '?')}", pad=26)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=5, fontsize=8, frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def render_parallel_table(results: dict[str, Any]) -> str:
    """Several GPUs: mean step (the orchestrator's denoise stage over its steps) and the speed-ups against the same
    tier on one GPU and against the diffusers baseline; empty without parallel rows."""
    rows = [r for r in results["variants"].values() if r.get("status") == "ok" and "parallel" in r]
    if not rows:
        return ""
    lines = ["| system | GPUs | mean step s | step speed-up vs 1 GPU | end to end s | e2e vs 1 GPU | e2e vs diffusers |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['gpus']} | {cell(r.get('step_mean_s'), '.3f')} "
                     f"| {cell(r.get('step_speedup_vs_1gpu'), '.3f')}x | {r['e2e_s']:.2f} "
                     f"| {cell(r.get('e2e_speedup_vs_1gpu'), '.3f')}x | {cell(r.get('speedup'), '.3f')}x |")
    return "\n".join(lines)


def save(results: dict[str, Any], args) -> None:
    """results.json, table.md and gpu_benchmark.png under --out-dir (after every phase: a crash keeps the rest)."""
    add_derived(results)
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    table = render_table(results)
    extra = [t for t in (render_low_memory_table(results), render_parallel_table(results)) if t]
    (args.out_dir / "table.md").write_text(table + "\n" + "".join(f"\n{t}\n" for t in extra))
    try:
        write_chart(results, args.out_dir / "gpu_benchmark.png")
    except Exception as e:  # the numbers matter more than the picture
        log(f"chart failed: {type(e).__name__}: {e}")

