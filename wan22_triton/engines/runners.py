"""A runner per engine: what a component model computes with, picked once from the model's table when it loads.

`torch` runs the diffusers/transformers module in the model's process (each model has its own runner class: a
text encoder, an expert and a VAE compute differently); `onnx` runs the exported graph in ONNX Runtime
(onnx_runner.OnnxRunner). `tensorrt` has no Python runner: Triton's tensorrt backend serves the plans under the same
contracts, and the VAE decoder drives its frame plans over BLS as it drives the ONNX frame models.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, TypeVar

from wan22_triton.options import Engine, parse

R = TypeVar("R", bound="Runner")


class Runner:
    """Computes a component's outputs with one engine."""

    torch_work = False  # PyTorch computes on the model's device: its cache is released when idle, first calls locked

    def close(self) -> None:
        """Stops what the runner started (worker processes)."""


def pick(table: Mapping[Engine, Callable[[Any], R]], model: Any) -> R:
    """The runner of `model`'s engine (its manifest's), made for `model`; ValueError where the model serves none."""
    engine = parse(Engine, model.manifest.engine)
    if engine not in table:
        raise ValueError(f"{model.name}: engine '{engine}' is not served by this Python model (it serves "
                         f"{', '.join(table)}); re-run the export")
    return table[engine](model)
