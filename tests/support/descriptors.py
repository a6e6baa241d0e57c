"""Descriptors numbered past select()'s FD_SETSIZE, as a daemon holding thousands of
connections hands out to every new one."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator

FD_SETSIZE = 1024


@contextlib.contextmanager
def new_descriptors_past_fd_setsize(spare: int = 256) -> Iterator[None]:
    """While this holds, every descriptor the process opens is numbered FD_SETSIZE or above.

    Raises the soft RLIMIT_NOFILE as far as needed (an unprivileged process may, up to its
    hard limit) and fills the low numbers with /dev/null; both are undone on exit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FD_SETSIZE + spare
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            raise RuntimeError(f"the hard descriptor limit {hard} is below {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    fillers: list[int] = []
    try:
        while True:
            fd = os.open(os.devnull, os.O_RDONLY)
            if fd >= FD_SETSIZE:
                os.close(fd)  # the first high number: free again for what the test opens
                break
            fillers.append(fd)
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
