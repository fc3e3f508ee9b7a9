"""What a served request did, read from the server itself (its /metrics and its events file), never from the
client: the tests of cancellation, abandonment and metrics compare against these."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

from wan22_triton.operations import events

SAMPLE = re.compile(r'^(wan22_\w+)\{([^}]*)\} (\S+)$')


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every wan22_* sample of the metrics endpoint `url`: (name, its labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def steps_run(before: dict, after: dict, model: str) -> float:
    """Denoising steps `model` ran in between, over every expert (wan22_denoise_steps_total)."""
    return sum(v - before.get(key, 0.0) for key, v in after.items()
               if key[0] == "wan22_denoise_steps_total" and ("model", model) in key[1])


def wait_for_outcome(url: str, before: dict, model: str, outcome: str, timeout_s: float = 60) -> dict:
    """Samples once `model` has counted a request with `outcome` since `before` (the orchestrator counts it when the
    request ends, which can be after the client has its error); the last samples if the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        after = scrape(url)
        if delta(before, after, "wan22_requests_total", model=model, outcome=outcome) >= 1 \
                or time.monotonic() > deadline:
            return after
        time.sleep(0.1)


def wait_for_forwards(events_file: Path, offset: int, count: int, timeout_s: float = 60) -> None:
    """Until the experts have written `count` expert_forward events after `offset` of the server's events file."""
    deadline = time.monotonic() + timeout_s
    while sum(e["event"] == "expert_forward" for e in events.read_events(events_file, offset)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} expert forwards within {timeout_s} s"
        time.sleep(0.05)
