"""The reference side of the GPU benchmark: diffusers' WanPipeline in BF16, eager, in its own process.

Stock `diffusers.WanPipeline` (default attention, no offload, no compile), whole pipeline in BF16 (VAE too), the
components built with `wan22_triton.engines.random_weights.random_component` from a configs-only checkpoint: the same function
and seeds the Triton models use, so both sides hold identical random weights. It runs a warm-up call (one step,
which also records the first step's transformer inputs and noise predictions, cond and uncond, for the parity
check), then the measured call, and writes a JSON summary, the uint8 frames and the parity tensors.
Optionally it first times an 8192^3 BF16 matmul on the same card (the TFLOP/s ceiling the report uses).

    python -m perf.gpu_baseline --checkpoint DIR --workdir DIR --json OUT.json [--device cuda] [...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from wan22_triton.components.expert import ENCODER_HIDDEN_STATES, EXPERT_MODELS, HIDDEN_STATES, NOISE_PRED, TIMESTEP
from wan22_triton.options import Precision


def matmul_tflops(device: str, n: int = 8192, iters: int = 30) -> float:
    """Median BF16 n^3 matmul rate (random data, CUDA events)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / float(np.median(times)) / 1e12


class Timings:
    """Wall times of the text encoder, each transformer call and the VAE decode (synchronised at the edges)."""

    def __init__(self, pipe, device: str, cfg: bool):
        self.device = device
        self.cfg = cfg  # two transformer calls (cond, uncond) per step
        self.calls: list[tuple[str, float]] = []  # (component, seconds)
        self.capture: list[dict[str, torch.Tensor]] | None = None
        self._t0: dict[str, float] = {}
        for name, module in (("text_encoder", pipe.text_encoder), ("transformer", pipe.transformer),
                             ("transformer_2", pipe.transformer_2)):
            module.register_forward_pre_hook(lambda _m, _a, kw, n=name: self._start(n, kw), with_kwargs=True)
            module.register_forward_hook(lambda _m, _a, kw, out, n=name: self._stop(n, kw, out), with_kwargs=True)
        decode = pipe.vae.decode

        def timed_decode(*args, **kwargs):
            self._start("vae_decode", {})
            out = decode(*args, **kwargs)
            self._stop("vae_decode", {}, None)
            return out

        pipe.vae.decode = timed_decode

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def _start(self, name: str, kwargs) -> None:
        self._sync()
        self._t0[name] = time.perf_counter()

    def _stop(self, name: str, kwargs, out) -> None:
        self._sync()
        self.calls.append((name, time.perf_counter() - self._t0.pop(name)))
        if self.capture is not None and name == "transformer" and len(self.capture) < 2:
            self.capture.append({
                **{name: kwargs[name].float().cpu() for name in (HIDDEN_STATES, TIMESTEP, ENCODER_HIDDEN_STATES)},
                NOISE_PRED: out[0].float().cpu(),
            })

    def summary(self) -> dict:
        """Per component: calls and seconds; per denoising step (cond + uncond calls): seconds per expert."""
        steps: dict[str, list[float]] = {"transformer": [], "transformer_2": []}
        per_call = [(n, s) for n, s in self.calls if n in steps]
        i = 0
        while i < len(per_call):  # CFG: two consecutive calls of one expert make a step
            name, seconds = per_call[i]
            if i + 1 < len(per_call) and per_call[i + 1][0] == name and self.cfg:
                seconds += per_call[i + 1][1]
                i += 1
            steps[name].append(seconds)
            i += 1
        return {
            "text_encoder_s": sum(s for n, s in self.calls if n == "text_encoder"),
            "vae_decode_s": sum(s for n, s in self.calls if n == "vae_decode"),
            "step_s": {EXPERT_MODELS[folder]: seconds for folder, seconds in steps.items()},
        }


def build_pipeline(checkpoint: Path, seed: int, dtype: torch.dtype, device: str):
    from diffusers import WanPipeline

    from wan22_triton.engines.random_weights import component_seed, random_component

    kinds = {"text_encoder": "text_encoder", "transformer": "transformer", "transformer_2": "transformer", "vae": "vae"}
    parts = {
        folder: random_component(kind, checkpoint / folder, component_seed(seed, folder), dtype, device)
        for folder, kind in kinds.items()
    }
    # The stock pipeline from the checkpoint directory: tokenizer, scheduler and boundary_ratio from its files.
    pipe = WanPipeline.from_pretrained(checkpoint, dtype=dtype, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", type=Precision, choices=list(Precision), default=Precision.BF16)
    parser.add_argument("--weights-seed", type=int, default=0)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--num-frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--guidance-scale-2", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--matmul", action="store_true", help="time an 8192^3 BF16 matmul first")
    args = parser.parse_args(argv)

    from wan22_triton.engines.loading import torch_dtype

    cuda = args.device.startswith("cuda")
    result: dict = {"device": args.device}
    if cuda:
        result["gpu"] = torch.cuda.get_device_name(0)
        if args.matmul:
            result["matmul_bf16_tflops"] = matmul_tflops(args.device)
            print(f"matmul 8192^3 bf16: {result['matmul_bf16_tflops']:.0f} TFLOP/s", flush=True)
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    pipe = build_pipeline(args.checkpoint, args.weights_seed, torch_dtype(args.precision), args.device)
    if cuda:
        torch.cuda.synchronize()
    result["build_s"] = time.perf_counter() - t0
    result["weights_gb"] = sum(p.numel() * p.element_size() for m in (pipe.text_encoder, pipe.transformer,
                               pipe.transformer_2, pipe.vae) for p in m.parameters()) / 1e9
    print(f"pipeline built in {result['build_s']:.1f}s ({result['weights_gb']:.1f} GB of weights)", flush=True)
    timings = Timings(pipe, args.device, cfg=args.guidance_scale > 1.0)

    def call(steps: int) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        frames = pipe(
            prompt=args.prompt, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
            num_frames=args.num_frames, num_inference_steps=steps, guidance_scale=args.guidance_scale,
            guidance_scale_2=args.guidance_scale_2, generator=torch.Generator("cpu").manual_seed(args.seed),
            output_type="np",
        ).frames[0]
        video = np.round(frames * 255).astype(np.uint8)  # as the served model's uint8 frames
        return video, time.perf_counter() - start

    # Warm-up (one step: cuDNN/cuBLAS plans, lazy module loads), recording the first step's transformer I/O.
    timings.capture = []
    _, result["warmup_s"] = call(1)
    capture, timings.capture = timings.capture, None
    timings.calls.clear()
    print(f"warm-up call (1 step) {result['warmup_s']:.1f}s", flush=True)

    video, result["e2e_s"] = call(args.steps)
    result.update(timings.summary())
    if cuda:
        result["torch_max_memory_allocated_gb"] = torch.cuda.max_memory_allocated() / 1e9
    print(f"measured call ({args.steps} steps) {result['e2e_s']:.2f}s", flush=True)

    args.workdir.mkdir(parents=True, exist_ok=True)
    np.save(args.workdir / "baseline_frames.npy", video)
    cond, uncond = capture[0], capture[-1]
    np.savez(
        args.workdir / "baseline_first_step.npz",
        hidden_states=cond[HIDDEN_STATES].numpy(),
        timestep=cond[TIMESTEP].numpy(),
        prompt_embeds=cond[ENCODER_HIDDEN_STATES].numpy(),
        negative_prompt_embeds=uncond[ENCODER_HIDDEN_STATES].numpy(),
        noise_pred_cond=cond[NOISE_PRED].numpy(),
        noise_pred_uncond=uncond[NOISE_PRED].numpy(),
    )
    result["frames_shape"] = list(video.shape)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
