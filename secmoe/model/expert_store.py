"""The experts' float weights in files mapped into memory, not held in it: the server with
workers.

With workers (:mod:`secmoe.distributed`) the server process that talks to the client (the
coordinator) computes nothing on the experts' weights: it reads each worker's experts to send
them, once, and again for a worker that restarted (Ray restarts a dead actor with nothing).
An :class:`ExpertStore` keeps each stack of expert matrices (E, d, h) in a file of its own,
mapped into the process (``mmap``, shared): a numpy array like any other, so the code that
reads the experts is unchanged and the HE caches key them by address as before, but its pages
are the file's. The kernel reads them in when they are touched and writes them back; after the
workers' shards are laid out, :meth:`ExpertStore.release` drops them from the process
(``madvise(MADV_DONTNEED)``), so the coordinator's resident memory holds none of the experts,
and a restarted worker's experts are read back from the file when they are sent again.

Each file is anonymous (``tempfile.TemporaryFile``: ``O_TMPFILE``, or unlinked at once where
that is missing): nothing is left on disk when the process ends, however it ends. The files
take the experts' float32 bytes on the store's disk (~14 GB for switch-base-128), reserved when
each is made (``posix_fallocate``: a disk without room is an :class:`ExpertStoreFull` error
then, not a crash when a page is written); on a ``tmpfs`` they would be memory again, which
:attr:`ExpertStore.in_memory` tells.

The weights are the server's own plaintext model; the files are readable by the server's user
only (``TemporaryFile`` creates them with mode 0600) and have no name another process could
open.
"""

from __future__ import annotations

import math
import mmap
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np

__all__ = ["ExpertStore", "ExpertStoreFull"]

#: File systems whose files are memory.
_MEMORY_FS = ("tmpfs", "ramfs")


def _filesystem(path: Path) -> str | None:
    """The type of the file system holding ``path`` (Linux ``/proc/mounts``; None elsewhere)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    target = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


class ExpertStoreFull(OSError):
    """The store's directory has no room for an array (said before anything is written)."""


class ExpertStore:
    """Arrays backed by anonymous files in ``directory`` (default: the system's temporary
    directory), each mapped into this process; :meth:`release` drops their pages from it."""

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory if directory is not None else tempfile.gettempdir())
        if not self.directory.is_dir():
            raise ValueError(f"expert store: {self.directory} is not a directory")
        if not os.access(self.directory, os.W_OK):
            raise ValueError(f"expert store: cannot write to {self.directory}")
        #: Whether the directory's files are memory (tmpfs): then the store saves nothing.
        self.in_memory = _filesystem(self.directory) in _MEMORY_FS
        self._maps: list[tuple[weakref.ref[mmap.mmap], int, int]] = []  # (map, address, size)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype | type = np.float32) -> np.ndarray:
        """A new array of ``shape`` in a file of its own (zeros until written)."""
        size = math.prod(shape) * np.dtype(dtype).itemsize
        if size == 0:
            return np.empty(shape, dtype)
        with tempfile.TemporaryFile(dir=self.directory) as f:
            try:  # the blocks reserved now: a full disk later would kill the process (SIGBUS)
                os.posix_fallocate(f.fileno(), 0, size)
            except OSError as exc:
                free = shutil.disk_usage(self.directory).free
                raise ExpertStoreFull(
                    f"expert store: {size / 1e9:.3g} GB of expert weights do not fit in "
                    f"{self.directory} ({free / 1e9:.3g} GB free: {exc.strerror}); give a "
                    "directory with room (serve --expert-dir DIR)"
                ) from None
            mm = mmap.mmap(f.fileno(), size)  # the mapping keeps the file when f is closed
        arr = np.frombuffer(mm, dtype).reshape(shape)
        self._maps = [m for m in self._maps if m[0]() is not None]
        self._maps.append((weakref.ref(mm), arr.__array_interface__["data"][0], size))
        return arr

    def copy(self, a: np.ndarray) -> np.ndarray:
        """``a`` in a new array of the store, copied one matrix at a time (each dropped from
        memory once written)."""
        out = self.empty(a.shape, a.dtype)
        for i in np.ndindex(a.shape[:-2]):
            out[i] = a[i]
            self.drop(out[i])
        return out

    def _live(self) -> list[tuple[mmap.mmap, int, int]]:
        return [(m, a, s) for r, a, s in self._maps if (m := r()) is not None]

    @property
    def nbytes(self) -> int:
        """Bytes of the store's arrays that are still in use."""
        return sum(size for _m, _a, size in self._live())

    def release(self) -> None:
        """Drop every array's pages from this process (the file keeps their values; a later
        read brings them back from the page cache or the disk)."""
        for mm, _address, _size in self._live():
            mm.madvise(mmap.MADV_DONTNEED)

    def drop(self, part: np.ndarray) -> None:
        """Drop the pages holding ``part`` (an array of the store, or a part of one) from
        this process, as :meth:`release` does; nothing for an array outside the store."""
        lo = hi = part.__array_interface__["data"][0]
        for n, stride in zip(part.shape, part.strides, strict=True):
            lo, hi = lo + min(0, stride * (n - 1)), hi + max(0, stride * (n - 1))
        hi += part.itemsize
        for mm, address, size in self._live():
            if address <= lo < address + size:
                start = (lo - address) // mmap.PAGESIZE * mmap.PAGESIZE
                mm.madvise(mmap.MADV_DONTNEED, start, min(size, hi - address) - start)
                return

    def resident_bytes(self) -> int | None:
        """Bytes of the store's arrays resident in this process (Linux ``/proc/self/smaps``;
        None elsewhere)."""
        spans = {address: size for _m, address, size in self._live()}
        try:
            lines = Path("/proc/self/smaps").read_text().splitlines()
        except OSError:
            return None
        total, inside = 0, False
        for line in lines:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):  # a mapping's first line: start-end …
                inside = int(head.split("-")[0], 16) in spans
            elif inside and head == "Rss:":
                total += int(line.split()[1]) * 1024
        return total
