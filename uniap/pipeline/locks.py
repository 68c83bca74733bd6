"""One run at a time per output: advisory locks on ``--out`` and ``--viz``.

A run holds, for each output folder, ``.uniap.lock`` in it exclusively, or, for ``--shard
i/n``, shared plus ``.uniap-<i>-of-<n>.lock`` exclusively (shards write different images, so
they may run together; a second run of one shard, or an unsharded run beside shards, may not).
An output file (one image's JSON, a COCO data set) is locked by ``.<name>.uniap.lock`` beside
it.  A run that finds a lock held stops before planning its work (:class:`PlanError`, exit
status 2).  Locks are ``flock`` locks (none where the file system or the platform has
none): the kernel releases them when a process dies, so a
killed run never blocks the next one.  The lock files are removed when the run ends (kept when
another shard still holds them).
"""

from __future__ import annotations

import os
from typing import Sequence

from ..formats.registry import PlanError

LOCK_NAME = ".uniap.lock"


def lock_files(target: str, is_folder: bool, shard: tuple[int, int] | None) -> list[tuple[str, bool]]:
    """``(lock file, exclusive)`` for one output ``target`` (absolute)."""
    if not is_folder:
        folder, name = os.path.split(target)
        return [(os.path.join(folder, f".{name}.uniap.lock"), True)]
    files = [(os.path.join(target, LOCK_NAME), shard is None)]
    if shard is not None:
        files.append((os.path.join(target, f".uniap-{shard[0]}-of-{shard[1]}.lock"), True))
    return files


class RunLock:
    """The locks of one run; release with :meth:`release` (or as a context manager)."""

    def __init__(self) -> None:
        self._held: list[tuple[str, int, bool]] = []  # (path, fd, exclusive)

    def acquire(self, path: str, exclusive: bool) -> None:
        """Take ``path``'s lock without waiting; PlanError when another run holds it or the
        folder cannot be written.  Without ``flock`` (Windows, a file system without locks)
        nothing is locked."""
        try:
            import fcntl
        except ImportError:
            return
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise PlanError(f"cannot write to {os.path.dirname(path)}: "
                                f"{(err.strerror or str(err)).lower()}") from None
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = _holder(path)
                raise PlanError(
                    f"another uniap run is writing to {os.path.dirname(path)} ({path} is locked"
                    f"{holder}); wait for it to finish, or choose another --out/--viz") from None
            except OSError:  # no locks on this file system (ENOLCK, EOPNOTSUPP): run unlocked
                os.close(fd)
                return
            except BaseException:
                os.close(fd)
                raise
            try:  # the file may have been removed by the run that held it: lock the new one
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._held.append((path, fd, exclusive))
        if exclusive:  # who holds it, for the message of a refused run (best effort: a full disk)
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:
                pass

    def release(self) -> None:
        """Unlock and remove the lock files that no other run holds."""
        if not self._held:
            return
        import fcntl

        while self._held:
            path, fd, exclusive = self._held.pop()
            try:
                if not exclusive:  # still shared by another shard? then leave the file
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        exclusive = True
                    except BlockingIOError:
                        pass
                if exclusive:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
            finally:
                os.close(fd)  # closing releases the lock

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_outputs(targets: Sequence[tuple[str, bool]], shard: tuple[int, int] | None) -> RunLock:
    """Lock every ``(path, is_folder)`` of ``targets`` (their folders must exist)."""
    lock = RunLock()
    try:
        seen = set()
        for target, is_folder in targets:
            for path, exclusive in lock_files(os.path.abspath(target), is_folder, shard):
                if path not in seen:
                    seen.add(path)
                    lock.acquire(path, exclusive)
    except BaseException:
        lock.release()
        raise
    return lock


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            pid = f.read().strip()
    except OSError:
        return ""
    return f" by process {pid}" if pid.isdigit() else ""
