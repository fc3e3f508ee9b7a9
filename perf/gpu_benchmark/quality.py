"""How close two outputs are: uint8 videos (PSNR, SSIM, exact equality) and float tensors (cosine).

`psnr` is also the tests' measure of served video against diffusers (tests/conftest.py imports it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import log


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays (inf when equal)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, stride: int = 4) -> float:
    """Mean SSIM of two uint8 (frames, height, width, 3) videos over every `stride`-th frame (torchmetrics, a 7x7
    uniform window, as scikit-image's default)."""
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure

    def frames(video: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(video[::stride])).permute(0, 3, 1, 2).double()

    return float(structural_similarity_index_measure(frames(a), frames(b), gaussian_kernel=False, kernel_size=7,
                                                     data_range=255.0))


def compare_to_reference(results: dict[str, Any], args) -> None:
    """Each variant's video (saved in --workdir) against the reference variant's, same seed: equal?, PSNR, max
    |difference|, as the row's `vs_reference`."""
    ref_name = args.reference_variant
    ref_path = args.workdir / f"video-{ref_name}.npy"
    if not ref_name or not ref_path.exists():
        return
    ref = np.load(ref_path)
    for name, row in results["variants"].items():
        path = args.workdir / f"video-{name}.npy"
        if name == ref_name or row.get("status") != "ok" or not path.exists():
            continue
        video = np.load(path)
        row["vs_reference"] = {
            "reference": ref_name, "equal": bool(np.array_equal(video, ref)), "psnr_db": psnr(video, ref),
            "max_abs_diff": int(np.abs(video.astype(np.int16) - ref.astype(np.int16)).max()),
        }
        log(f"{name} vs {ref_name}: {row['vs_reference']}")
