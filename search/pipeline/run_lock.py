"""One owner per run folder: `run.lock`, holding the owner's host and PID, and an OS lock on it while the run lives.

Two runs writing one folder corrupt each other (the second once failed and requeued the first's running trial,
and the first then crashed telling a trial the second had finished). So the first run takes the lock, and a
second one refuses in one line naming the owner. The OS lock (`flock`) goes away with its process however it
ends, kill -9 included: a lock file whose owner is dead is stale, and the next run takes it over and says so.
A lock naming another host cannot be checked from here: it is refused, and the message says how to clear it.
`--out` is checked before anything else is done: a file, or a folder that cannot be written, is an error before
any data is read.
"""

from __future__ import annotations

import atexit
import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from search.engine.owner import Owner
from spaces.validated import ConfigError

LOCK_FILE = "run.lock"


class RunFolderBusy(ConfigError):
    """Another live run owns the run folder; the message names it."""


def check_out(out: Path) -> None:
    """`out` can become a run folder: it is one, or it can be created, and this user can write there."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; give a folder for the run (new or existing)")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {existing} cannot be written by this user; give a folder you can write")


class RunLock:
    """The lock of the run folder `out`, held by this process from `acquire` to `release` (or its exit)."""

    def __init__(self, out: Path, log: Callable[[str], None]) -> None:
        self.path, self.log = Path(out) / LOCK_FILE, log
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> None:
        if self.held:
            return
        check_out(self.path.parent)
        for _ in range(3):  # a lock released (and its file removed) between our open and our flock: open again
            fd = self._open()
            try:
                if self._take(fd):
                    self.fd = fd
                    atexit.register(self.release)
                    return
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise RunFolderBusy(self._busy(None))

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise ConfigError(
                f"--out {self.path.parent}: cannot create {LOCK_FILE} ({error.strerror}); give a folder you can write"
            ) from None

    def _take(self, fd: int) -> bool:
        """Lock the open file `fd`; False when it is no longer the folder's lock file (try again)."""
        previous = Owner.parse(os.read(fd, 4096).decode(errors="replace"))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunFolderBusy(self._busy(previous)) from None
        try:
            if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                return False
        except FileNotFoundError:
            return False
        if previous is not None and previous != Owner.me():
            if previous.alive() is not False:  # another host, or a live process on a file system without flock
                raise RunFolderBusy(self._busy(previous))
            self.log(
                f"note: {self.path.parent} was locked by a run that is no longer running ({previous.label()}); "
                "taking it over (its unfinished trials are retried)"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, (Owner.me().label() + "\n").encode(), 0)
        os.fsync(fd)
        return True

    def _busy(self, owner: Owner | None) -> str:
        if owner is not None and owner.alive() is False:  # a process the dead run started still holds the OS lock
            return (
                f"run folder {self.path.parent} is locked by a process that the ended run {owner.label()} started; "
                "stop that process (or wait for it), then rerun"
            )
        who = owner.label() if owner else "another process"
        clear = f"; if it is no longer running, delete {self.path}" if owner is None or owner.alive() is None else ""
        return (
            f"run folder {self.path.parent} is in use by another run ({who}); wait for it to finish or give "
            f"another --out{clear}"
        )

    def release(self) -> None:
        """Remove the lock file (ours) and drop the OS lock; safe to call more than once."""
        if self.fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                self.path.unlink()
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
        atexit.unregister(self.release)
