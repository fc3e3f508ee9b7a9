"""What names a LoRA adapter, checked without torch (the request validation runs in the API service too)."""

from __future__ import annotations

import re

from wan22_triton.errors import shown

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # no '.': peft refuses it in adapter names

LoraChoice = tuple[str, float]  # (adapter name, scale) of one call; None: the base model


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a LoRA, or None: 1-64 letters, digits, '_' or '-', a letter or digit first (a name
    is a file name inside the experts' LoRA folder, never a path)."""
    if _NAME.fullmatch(name):
        return None
    return f"must be 1-64 letters, digits, '_' or '-', a letter or digit first (a name, not a path); got {shown(name)}"
