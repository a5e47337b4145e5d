"""One owner per run (or study) folder: an exclusive `flock` on the folder itself, held for its life.

A second `evo-pai run --out SAME` (even with --overwrite), or a `resume` of a folder that a run
still writes, is refused with one line before it writes anything. The lock is taken on the
directory (no lock file: a refused command leaves the folder exactly as it was), and the kernel
drops it when the process ends, however it ends, so a killed run never leaves a stale lock.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from evo_pai.core.errors import EvoPaiError


def _holder(folder: Path) -> str:
    """' (pid N)' of the process holding the folder's flock, from /proc/locks where there is one."""
    try:
        st = os.stat(folder)
        ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()
            if "FLOCK" in parts and len(parts) >= 6 and parts[5] == ident and parts[4].isdigit():
                return f" (pid {parts[4]})"
    except (OSError, ValueError):
        pass
    return ""


def _refuse(folder: Path, what: str) -> EvoPaiError:
    return EvoPaiError(f"{folder}: another evo-pai process{_holder(folder)} is using this {what} folder; wait for it "
                       "to finish or choose another folder")


def _try_lock(folder: Path) -> int | None:
    """A read-only fd of `folder` holding its exclusive flock; None if another process holds it."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def check_unlocked(folder: Path, what: str = "run") -> None:
    """Refuse early (before loading data) if a live process holds the folder; keeps nothing."""
    if not folder.is_dir():
        return
    fd = _try_lock(folder)
    if fd is None:
        raise _refuse(folder, what)
    os.close(fd)  # closing drops the probe's lock


class FolderLock:
    """`with FolderLock(folder):` — exclusive for the block; the folder must exist."""

    def __init__(self, folder: Path, what: str = "run"):
        self.folder, self.what = folder, what
        self.fd: int | None = None

    def __enter__(self) -> "FolderLock":
        try:
            fd = _try_lock(self.folder)
        except OSError as exc:
            raise EvoPaiError(f"{self.folder}: cannot open the folder to lock it ({exc.strerror})") from None
        if fd is None:
            raise _refuse(self.folder, self.what)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None
