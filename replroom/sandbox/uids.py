"""Host uids for bwrap rooms, leased host-wide so that no two live rooms share one.

A lease is an exclusive ``flock`` on a file named after the uid. The kernel
drops it when the holder exits, however it exits, so a crashed server frees
its uids and two servers on one host never hand out the same uid.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from replroom.sandbox.base import SandboxError


class NoFreeUid(SandboxError):
    pass


@dataclass
class UidLease:
    uid: int
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the lock
            self.fd = -1


class UidLeases:
    def __init__(self, directory: Path, base: int, count: int) -> None:
        self.directory = directory
        self.base = base
        self.count = count

    def prepare(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise SandboxError(f"cannot create {self.directory}: {error.strerror}") from None

    def acquire(self) -> UidLease:
        self.prepare()
        # Start at a random slot so that concurrent servers rarely contend.
        start = secrets.randbelow(self.count)
        for step in range(self.count):
            uid = self.base + (start + step) % self.count
            fd = os.open(self.directory / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return UidLease(uid, fd)
        raise NoFreeUid(f"all {self.count} sandbox uids are in use: raise uid_count")
