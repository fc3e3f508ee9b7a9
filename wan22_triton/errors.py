"""The exceptions the serving code raises on purpose, and the Triton error each one is answered with."""

from __future__ import annotations


class RequestError(ValueError):
    """Bad request input; served as Triton INVALID_ARG."""


class Cancelled(RuntimeError):
    """The client went away or the request ran past its limit; served as Triton CANCELLED."""
