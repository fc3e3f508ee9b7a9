"""Generation metrics on Triton's own `/metrics` endpoint: Python-backend custom metrics (`pb_utils.MetricFamily`).

Every metric carries `model` (`wan22_t2v` or `wan22_t2v_stream`). Triton 2.51's custom metrics are counters and
gauges (no histograms): averages are a `*_seconds_total` over its count, as with Triton's own `nv_inference_*_us`.

* `wan22_requests_total{outcome}`: finished requests, `outcome` ok | invalid | cancelled | failed
* `wan22_request_seconds_total`: their seconds in the orchestrator, validation to response
* `wan22_stage_seconds_total{stage}`: text_encoder | denoise | vae_decoder | encode_mp4 (ok requests)
* `wan22_denoise_steps_total{expert}`, `wan22_denoise_step_seconds_total{expert}`: expert calls (one a step, cond and
  uncond as one batch) and their seconds, BLS round trip included
* `wan22_active_generations`: requests in the orchestrator now (gauge)
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

from wan22_triton.errors import Cancelled, RequestError

OUTCOMES = ("ok", "invalid", "cancelled", "failed")


def outcome_of(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, RequestError):
        return "invalid"
    if isinstance(exc, Cancelled):
        return "cancelled"
    return "failed"


class GenerationMetrics:
    """The metrics of one orchestrator model; `pb` is triton_python_backend_utils."""

    def __init__(self, pb: Any, model: str):
        self.model = model
        counter, gauge = pb.MetricFamily.COUNTER, pb.MetricFamily.GAUGE
        self._families = {
            "requests": pb.MetricFamily("wan22_requests_total", "Finished generation requests by outcome", counter),
            "request_seconds": pb.MetricFamily("wan22_request_seconds_total",
                                               "Seconds of finished generation requests", counter),
            "stage_seconds": pb.MetricFamily("wan22_stage_seconds_total", "Seconds per generation stage", counter),
            "steps": pb.MetricFamily("wan22_denoise_steps_total", "Denoising steps by expert", counter),
            "step_seconds": pb.MetricFamily("wan22_denoise_step_seconds_total",
                                            "Seconds of denoising steps by expert (BLS round trip)", counter),
            "active": pb.MetricFamily("wan22_active_generations", "Generation requests in progress", gauge),
        }
        self._metrics: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        for outcome in OUTCOMES:  # present from the start, so a rate over them needs no first event
            self._metric("requests", outcome=outcome)
        self._metric("active").set(0)

    def _metric(self, family: str, **labels: str) -> Any:
        key = (family, tuple(sorted(labels.items())))
        if key not in self._metrics:
            self._metrics[key] = self._families[family].Metric(labels={"model": self.model, **labels})
        return self._metrics[key]

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Around one request: active while it runs, then counted by outcome (the exception, if any, propagates)."""
        started = time.monotonic()
        self._metric("active").increment(1)
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._metric("active").increment(-1)
            self._metric("requests", outcome=outcome_of(error)).increment(1)
            self._metric("request_seconds").increment(time.monotonic() - started)

    def stages(self, stage_seconds: dict[str, float]) -> None:
        for stage, seconds in stage_seconds.items():
            self._metric("stage_seconds", stage=stage).increment(seconds)

    def timed_expert(self, expert_call: Callable[..., Any]) -> Callable[..., Any]:
        """`expert_call(model, ...)` that also counts the step and its seconds under `expert=model`."""

        def call(model: str, *args: Any, **kwargs: Any) -> Any:
            t0 = time.monotonic()
            out = expert_call(model, *args, **kwargs)
            self._metric("steps", expert=model).increment(1)
            self._metric("step_seconds", expert=model).increment(time.monotonic() - t0)
            return out

        return call
