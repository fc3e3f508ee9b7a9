"""The exceptions the serving code raises on purpose, and the Triton error each one is answered with."""

from __future__ import annotations

from typing import Any

SHOWN_CHARS = 80  # an error echoes at most this much of a value: a 4 MiB value must not come back as 4 MiB


class RequestError(ValueError):
    """Bad request input; served as Triton INVALID_ARG. `param`: the request input it is about, where one is."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class DoesNotFit(RuntimeError):
    """The repository's models cannot all fit their GPU (wan22_triton.memory.budget): refused at load."""


class Cancelled(RuntimeError):
    """The client went away or the request ran past its limit; served as Triton CANCELLED."""


def shown(value: Any) -> str:
    """`value` as an error message quotes it: its repr, or for long text its size."""
    if isinstance(value, str) and len(value) > SHOWN_CHARS:
        return f"{len(value.encode())} bytes of text"
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"
