"""MP4 encoding and decoding with imageio-ffmpeg (the ffmpeg binary ships in its wheel)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def write_mp4(frames: np.ndarray, path: str | Path, fps: float, quality: float = 8.0) -> Path:
    """uint8 frames [F, H, W, 3] -> H.264 MP4 at `fps`."""
    import imageio_ffmpeg

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [F, H, W, 3], got shape {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24", quality=quality, macro_block_size=1
    )
    writer.send(None)  # start ffmpeg
    for frame in frames:
        writer.send(frame)
    writer.close()
    return path


def encode_mp4(frames: np.ndarray, fps: float) -> bytes:
    """The MP4 file as bytes (for sending it instead of raw frames)."""
    fd, name = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        return write_mp4(frames, name, fps).read_bytes()
    finally:
        os.unlink(name)


def read_mp4(path: str | Path) -> tuple[np.ndarray, float]:
    """(uint8 frames [F, H, W, 3], fps) of an MP4 file."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader]
    return np.stack(frames), float(meta["fps"])
