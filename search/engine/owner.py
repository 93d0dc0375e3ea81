"""Which process owns a run folder or a trial: its host, its PID and when it started, and whether it still runs.

The start time (the kernel's, from /proc on Linux) tells a reused PID from the owner: a process that died and a
new one that got its number are not the same owner. On another host nothing can be checked (`alive` is None);
callers then keep their hands off.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (state first); [] where there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat.rpartition(")")[2].split()


def _started(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); "" where unknown."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else ""


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: str = ""

    @classmethod
    def of(cls, pid: int) -> Owner:
        """The process `pid` of this host."""
        return cls(socket.gethostname(), pid, _started(pid))

    @classmethod
    def me(cls) -> Owner:
        return cls.of(os.getpid())

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        """The owner written by `label` (None for anything else: an old or damaged record)."""
        host, _, rest = text.strip().rpartition(" pid ")
        pid, _, started = rest.partition(" started ")
        return cls(host, int(pid), started) if host and pid.isdigit() else None

    def label(self) -> str:
        return f"{self.host} pid {self.pid}" + (f" started {self.started}" if self.started else "")

    def alive(self) -> bool | None:
        """True while this process runs, False once it has ended, None when that cannot be told (another host)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it exists, under another user
            pass
        fields = _stat(self.pid)
        if fields and fields[0] in ("Z", "X"):  # a zombie has ended; only its exit status is left
            return False
        return not self.started or not fields or fields[19] == self.started
