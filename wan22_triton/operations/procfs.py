"""A process's /proc/<pid>/stat, read and parsed in one place: the fields the server's watchers use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ZOMBIE = "Z"


@dataclass(frozen=True)
class ProcStat:
    name: str  # field 2 (comm), without its parentheses
    state: str  # field 3: ZOMBIE for a process that ended and was not reaped
    exit_code: int | None  # field 52 (Linux >= 3.5): a zombie's waitpid status

    @property
    def live(self) -> bool:
        return self.state != ZOMBIE


def read_stat(pid: int) -> ProcStat | None:
    """None once the process is reaped (or was never there)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: it ends at the last ')'
    fields = text[text.rindex(")") + 2:].split()
    return ProcStat(text[text.index("(") + 1: text.rindex(")")], fields[0],
                    int(fields[49]) if len(fields) >= 50 else None)
