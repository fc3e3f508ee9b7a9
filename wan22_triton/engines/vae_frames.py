"""Wan's VAE decoder as two frame graphs whose causal-convolution caches are explicit tensors.

diffusers' `AutoencoderKLWan._decode` runs the decoder once per latent frame and threads a Python list of
per-convolution feature caches (`feat_cache`) through the calls. A graph traced through that loop bakes the frame
count in; a graph per call cannot, because the list holds `None`, 1-frame tensors, 2-frame tensors or the string
"Rep" depending on the call. This module normalises the list so that two graphs serve every frame count:

* `FirstFrameDecoder`: latent frame 0 -> (1 video frame, caches)
* `StepDecoder`:       (latent frame i, caches) -> (`scale_factor_temporal` video frames, new caches)

where every cache is a tensor of exactly 2 frames, shaped (batch, channels, 2, h * scale, w * scale) with (h, w)
the latent size (`components.common.CacheEntry` gives channels and scale per cache, `discover_cache_layout` finds them).

Why the normalisation is exact (read from diffusers' `autoencoder_kl_wan.py`):

* `WanCausalConv3d.forward` prepends the cache and pads `2 * padding_t - cache_frames` zero frames in front, so a
  3-tap causal conv given no cache pads 2 zero frames and given a 1-frame cache pads 1: in both cases the conv sees
  exactly what it sees with the cache zero-padded in front to 2 frames. The cache update (`x[:, :, -2:]`, with the
  old cache's last frame prepended when `x` has one frame) keeps the same values either way.
* `WanResample("upsample3d")` stores "Rep" on the first chunk and skips its `time_conv`; on the next chunk it runs
  `time_conv` with no cache (2 zero frames of padding) and caches `[zeros, x]`. That is exactly a 2-frame zero cache
  that the first frame leaves untouched.

`post_quant_conv` (1x1x1, per frame), `unpatchify` (spatial only, for VAEs with `patch_size`) and the final clamp to
[-1, 1] are per frame too, so both graphs include them and their outputs concatenate to `vae.decode(z).sample`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from wan22_triton.components.common import CacheEntry, ComponentSpec

CACHE_FRAMES = 2  # diffusers' CACHE_T: frames a 3-tap causal convolution keeps from the previous chunk


def _causal_conv_class() -> type:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return WanCausalConv3d


def _cache_slots(vae: Any) -> int:
    """Length of diffusers' `feat_cache` list: one slot per causal conv (1x1x1 shortcut convs' slots stay unused)."""
    conv = _causal_conv_class()
    return sum(isinstance(m, conv) for m in vae.decoder.modules())


def _finish(out: torch.Tensor, patch_size: int | None) -> torch.Tensor:
    if patch_size is not None:
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        out = unpatchify(out, patch_size=patch_size)
    return torch.clamp(out, min=-1.0, max=1.0)


def _pad_to_cache(x: torch.Tensor) -> torch.Tensor:
    """Zero frames in front up to CACHE_FRAMES (what the causal conv would pad for a shorter cache)."""
    missing = CACHE_FRAMES - x.shape[2]
    if missing <= 0:
        return x
    zeros = torch.zeros_like(x[:, :, :1]).expand(-1, -1, missing, -1, -1)
    return torch.cat([zeros, x], dim=2)


@torch.no_grad()
def discover_cache_layout(vae: Any, latent_size: int = 2) -> list[CacheEntry]:
    """Channels and spatial scale (relative to the latent) of every cache the decoder uses, in `feat_cache` order.

    Runs the decoder as diffusers does on a tiny (1, z, 2, n, n) latent: after the second frame every used slot holds
    a 2-frame tensor, whose shape gives the entry. Unused slots (1x1x1 shortcut convs) trail the used ones.
    """
    z_dim = vae.config.z_dim
    param = next(vae.parameters())
    latent = torch.zeros(1, z_dim, 1, latent_size, latent_size, dtype=param.dtype, device=param.device)
    feat: list[Any] = [None] * _cache_slots(vae)
    x = vae.post_quant_conv(latent)
    idx = [0]
    vae.decoder(x, feat_cache=feat, feat_idx=idx, first_chunk=True)
    used = idx[0]
    idx = [0]
    vae.decoder(x, feat_cache=feat, feat_idx=idx)
    if idx[0] != used or any(f is None for f in feat[:used]) or any(f is not None for f in feat[used:]):
        raise RuntimeError("the decoder's cache use differs between the first and later frames; unsupported VAE")
    layout = []
    for i, cache in enumerate(feat[:used]):
        if not isinstance(cache, torch.Tensor) or cache.shape[2] != CACHE_FRAMES:
            raise RuntimeError(f"cache {i} is {type(cache).__name__} {getattr(cache, 'shape', '')}, expected 2 frames")
        h, w = cache.shape[3], cache.shape[4]
        if h % latent_size or w % latent_size or h // latent_size != w // latent_size:
            raise RuntimeError(f"cache {i} has spatial size {h}x{w}, not a multiple of the latent {latent_size}")
        layout.append(CacheEntry(channels=int(cache.shape[1]), scale=h // latent_size))
    return layout


class _FrameDecoder(nn.Module):
    def __init__(self, vae: Any, layout: Sequence[CacheEntry] | None = None) -> None:
        super().__init__()
        # Only the decoder half: the encoder's weights must not end up in the graphs.
        self.post_quant_conv = vae.post_quant_conv
        self.decoder = vae.decoder
        self.patch_size = getattr(vae.config, "patch_size", None)
        self.layout = list(layout) if layout is not None else discover_cache_layout(vae)
        self.slots = _cache_slots(vae)


class FirstFrameDecoder(_FrameDecoder):
    """latent_frame (B, z, 1, h, w) -> (frames (B, 3, 1, H, W), *caches (B, c_i, 2, h*s_i, w*s_i))."""

    def forward(self, latent_frame: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feat: list[Any] = [None] * self.slots
        x = self.post_quant_conv(latent_frame)
        out = self.decoder(x, feat_cache=feat, feat_idx=[0], first_chunk=True)
        caches = []
        for entry, cache in zip(self.layout, feat):
            if isinstance(cache, torch.Tensor):
                caches.append(_pad_to_cache(cache))
            elif cache == "Rep":  # upsample3d's time_conv has not run yet: its cache is zeros
                b, _, _, h, w = latent_frame.shape
                caches.append(latent_frame.new_zeros(b, entry.channels, CACHE_FRAMES, h * entry.scale, w * entry.scale))
            else:
                raise RuntimeError(f"unexpected cache {cache!r} after the first frame")
        return (_finish(out, self.patch_size), *caches)


class StepDecoder(_FrameDecoder):
    """(latent_frame (B, z, 1, h, w), *caches) -> (frames (B, 3, T, H, W), *new caches), T the temporal scale."""

    def forward(self, latent_frame: torch.Tensor, *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(caches) != len(self.layout):
            raise ValueError(f"expected {len(self.layout)} caches, got {len(caches)}")
        feat: list[Any] = [*caches, *([None] * (self.slots - len(caches)))]
        x = self.post_quant_conv(latent_frame)
        out = self.decoder(x, feat_cache=feat, feat_idx=[0])
        return (_finish(out, self.patch_size), *feat[: len(self.layout)])


def _frame(latents: Any, i: int) -> Any:
    if isinstance(latents, torch.Tensor):
        return latents[:, :, i : i + 1].contiguous()
    return np.ascontiguousarray(latents[:, :, i : i + 1])


def decode_with_frame_graphs(
    run_first: Callable[[Any], tuple[Any, Sequence[Any]]],
    run_step: Callable[[Any, Sequence[Any]], tuple[Any, Sequence[Any]]],
    latents: Any,
) -> Any:
    """Decode de-normalised latents (B, z, F, h, w) to video (B, 3, 1 + T*(F-1), H, W) with the two frame graphs.

    Engine-agnostic: `run_first(latent_frame) -> (frames, caches)` and `run_step(latent_frame, caches) ->
    (frames, caches)` may wrap the torch modules, onnxruntime sessions or TensorRT engines; arrays are numpy or torch
    (whatever `latents` is), caches are passed back exactly as returned.
    """
    frames, caches = run_first(_frame(latents, 0))
    chunks = [frames]
    for i in range(1, latents.shape[2]):
        frames, caches = run_step(_frame(latents, i), caches)
        chunks.append(frames)
    if isinstance(chunks[0], torch.Tensor):
        return torch.cat(chunks, dim=2)
    return np.concatenate(chunks, axis=2)


def named_runners(
    run_first_graph: Callable[[dict[str, Any]], Sequence[Any] | Mapping[str, Any]],
    run_step_graph: Callable[[dict[str, Any]], Sequence[Any] | Mapping[str, Any]],
    first_spec: ComponentSpec,
    step_spec: ComponentSpec,
) -> tuple[Callable, Callable]:
    """`run_first` / `run_step` for `decode_with_frame_graphs` over engines fed by name.

    `run_*_graph(feeds)` takes {input name: array} and returns the outputs either as {output name: array} or as a
    sequence in declared order (onnxruntime: `lambda feeds: session.run(spec.output_names, feeds)`). All names
    come from the component specs (`components.vae_decoder.vae_decoder_frame_specs`).
    """
    latent_name, *cache_names = step_spec.input_names
    if first_spec.input_names != [latent_name] or len(first_spec.outputs) != len(step_spec.outputs):
        raise ValueError("first-frame and step specs do not belong together")

    def ordered(result: Any, spec: ComponentSpec) -> list[Any]:
        return [result[n] for n in spec.output_names] if isinstance(result, Mapping) else list(result)

    def run_first(latent_frame: Any) -> tuple[Any, list[Any]]:
        frames, *caches = ordered(run_first_graph({latent_name: latent_frame}), first_spec)
        return frames, caches

    def run_step(latent_frame: Any, caches: Sequence[Any]) -> tuple[Any, list[Any]]:
        feeds = {latent_name: latent_frame, **dict(zip(cache_names, caches, strict=True))}
        frames, *new = ordered(run_step_graph(feeds), step_spec)
        return frames, new

    return run_first, run_step


def torch_runners(vae: Any, layout: Sequence[CacheEntry] | None = None) -> tuple[Callable, Callable]:
    """`run_first` / `run_step` over the torch modules, for `decode_with_frame_graphs` (reference and tests)."""
    layout = list(layout) if layout is not None else discover_cache_layout(vae)
    first, step = FirstFrameDecoder(vae, layout).eval(), StepDecoder(vae, layout).eval()

    @torch.no_grad()
    def run_first(latent_frame: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        frames, *caches = first(latent_frame)
        return frames, caches

    @torch.no_grad()
    def run_step(latent_frame: torch.Tensor, caches: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        frames, *new = step(latent_frame, *caches)
        return frames, new

    return run_first, run_step


CACHE_LAYOUT_FILE = "vae_decoder_cache_layout.json"


def save_cache_layout(layout: Sequence[CacheEntry], out_dir: str | Path) -> None:
    """Written beside the frame graphs at export, read back by the serving model to rebuild their specs."""
    rows = [{"channels": c.channels, "scale": c.scale} for c in layout]
    (Path(out_dir) / CACHE_LAYOUT_FILE).write_text(json.dumps(rows, indent=1) + "\n")


def load_cache_layout(out_dir: str | Path) -> list[CacheEntry]:
    entries = json.loads((Path(out_dir) / CACHE_LAYOUT_FILE).read_text())
    return [CacheEntry(channels=int(e["channels"]), scale=int(e["scale"])) for e in entries]
