"""Segment files (DESIGN §5): a 64-byte header, then fixed-width little-endian records.

Record ``i`` of a segment whose first record index is ``f`` lives at byte
``64 + (i - f) * record_bytes``. The header is checked by CRC32; a sealed segment as a whole is
checked by the sha256 recorded in the manifest; the records of an open segment of format v2 are
checked by its checksum file (:mod:`megacontext.store.checksums`). The layout of the segment
file itself is the same in v1 and v2: a v2 header only says that a checksum file goes with it.

This module also holds the small, careful I/O helpers the store is built from: write everything
or fail cleanly, fsync a directory, replace a file atomically. Every ``OSError`` is translated into
a typed store error that names the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megacontext.files import sha256_file
from megacontext.store.errors import (
    DiskFullError,
    InvalidInputError,
    StorageCorruptionError,
    StoreError,
    StorePermissionError,
)

MAGIC = b"MCSG"
FORMAT_VERSION = 2  # what this version writes (manifest and new segments)
READABLE_VERSIONS = (1, 2)  # what it reads; v1 stores are migrated by their next writer
HEADER_BYTES = 64
_HEADER = struct.Struct("<4sHHHHIIIQ16s12s")  # bytes 0-59; CRC32 of them follows at 60
assert _HEADER.size == 60

DTYPE_CODES: dict[str, int] = {"uint32": 0, "float16": 1, "bfloat16": 2, "float32": 3}
DTYPE_NAMES = {code: name for name, code in DTYPE_CODES.items()}


def numpy_dtype(name: str) -> np.dtype[np.generic]:
    """The numpy dtype of a stored dtype name (``bfloat16`` needs the ``ml_dtypes`` package)."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise InvalidInputError(
                "gist dtype bfloat16 needs the ml_dtypes package: pip install ml_dtypes"
            ) from None
        bf16: np.dtype[np.generic] = np.dtype(ml_dtypes.bfloat16)
        return bf16
    if name not in DTYPE_CODES:
        known = ", ".join(DTYPE_CODES)
        raise InvalidInputError(f"unsupported record dtype {name!r}; choose one of: {known}")
    return np.dtype(name).newbyteorder("<")


def dtype_name(dtype: np.dtype[np.generic]) -> str:
    """The stored name of a numpy gist dtype (``float16``, ``bfloat16`` or ``float32``)."""
    name = "bfloat16" if dtype.name == "bfloat16" else dtype.name
    if name not in DTYPE_CODES or name == "uint32":
        raise InvalidInputError(
            f"gist dtype must be float16, bfloat16 or float32, got {dtype}; set gist_dtype"
        )
    return name


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    """The decoded 64-byte header of a segment file."""

    level: int
    dtype: str
    width: int
    K: int
    capacity: int
    first_index: int
    tree_fingerprint: bytes
    version: int = FORMAT_VERSION

    def pack(self) -> bytes:
        body = _HEADER.pack(
            MAGIC,
            self.version,
            self.level,
            DTYPE_CODES[self.dtype],
            0,
            self.width,
            self.K,
            self.capacity,
            self.first_index,
            self.tree_fingerprint,
            bytes(12),
        )
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def unpack(cls, data: bytes, path: Path, fix: str) -> SegmentHeader:
        """Decode and check a header; raise :class:`StorageCorruptionError` naming ``path``."""
        if len(data) < HEADER_BYTES:
            raise StorageCorruptionError(
                f"{path}: segment header is truncated ({len(data)} of {HEADER_BYTES} bytes); {fix}"
            )
        body, (crc,) = data[:60], struct.unpack("<I", data[60:64])
        if zlib.crc32(body) != crc:
            raise StorageCorruptionError(f"{path}: segment header fails its CRC32 check; {fix}")
        magic, version, level, code, _r, width, K, capacity, first, fp, _pad = _HEADER.unpack(body)
        if magic != MAGIC:
            raise StorageCorruptionError(f"{path}: not a segment file (magic {magic!r}); {fix}")
        if version not in READABLE_VERSIONS:
            raise StorageCorruptionError(
                f"{path}: segment format version {version} is not supported by this version of "
                f"MegaContext (it reads versions {READABLE_VERSIONS}); upgrade megacontext"
            )
        if code not in DTYPE_NAMES:
            raise StorageCorruptionError(f"{path}: unknown dtype code {code} in header; {fix}")
        return cls(level, DTYPE_NAMES[code], width, K, capacity, first, fp, version)


def segment_name(level: int, seq: int) -> str:
    """Relative path of segment number ``seq`` of ``level``: ``L{level}/{seq:08d}.seg``."""
    return f"L{level}/{seq:08d}.seg"


def sums_name(level: int, seq: int) -> str:
    """Relative path of the checksum file of segment ``seq``: ``L{level}/{seq:08d}.sum``."""
    return f"L{level}/{seq:08d}.sum"


def segment_seq(path: Path) -> int | None:
    """The segment number of a ``{seq:08d}.seg`` / ``.sum`` file name, else ``None``."""
    stem, dot, suffix = path.name.partition(".")
    if dot and suffix in ("seg", "sum") and len(stem) == 8 and stem.isdigit():
        return int(stem)
    return None


# -- careful I/O --------------------------------------------------------------------------------


def os_error(exc: OSError, path: Path | str, action: str) -> StoreError:
    """Translate an ``OSError`` into a typed store error naming the file and what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"no space left on the device while {action} {path}; free space (or move the store) "
            "and retry — records already flushed are safe"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorePermissionError(
            f"permission denied while {action} {path} ({exc.strerror}); open the store read-only "
            "(readonly=True) or make the directory writable"
        )
    return StoreError(f"I/O error while {action} {path}: {exc}")


def write_all(fd: int, data: bytes | memoryview, offset: int, path: Path) -> None:
    """Write all of ``data`` at ``offset``. On failure, cut the file back to ``offset`` and raise.

    A failed append therefore leaves no partial record behind, and nothing before ``offset`` is
    touched: what was stored stays stored.
    """
    view = memoryview(data).cast("B")
    done = 0
    try:
        while done < len(view):
            done += os.pwrite(fd, view[done:], offset + done)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, offset)
        raise os_error(exc, path, "writing") from exc


def fsync_dir(path: Path) -> None:
    """fsync a directory so that entries created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically: write a temp file, fsync, rename, fsync the dir."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        raise os_error(exc, tmp, "creating") from exc
    try:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:])
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise os_error(exc, tmp, "writing") from exc
    os.close(fd)
    try:
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise os_error(exc, path, "replacing") from exc


file_sha256 = sha256_file  # the store's name for the shared helper
