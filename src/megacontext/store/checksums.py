"""The checksum file of an open segment (storage format v2): a CRC32C per block of records.

A sealed segment is checked by the sha256 the manifest records for it; the records of the
*open* segment of a level are checked by a checksum file beside it, ``L{level}/{seq:08d}.sum``,
modelled on LevelDB's log (a CRC32C per block, computed by the CPU's ``crc32`` instruction).
The segment file keeps its v1 layout, so records stay memory-mappable at deterministic offsets;
only the checksums live apart.

The records of a segment are cut into blocks of ``block_records`` records (about 64 KiB; at
least one record). Each block has **two slots**; a slot says "the first ``end`` records of this
block have CRC32C ``crc``" (the CRC of their bytes, computed incrementally as records arrive, so
an append costs the CRC of its own bytes and one small write, never a re-hash). Layout
(little-endian)::

    offset        size  field
    0             64    header: magic "MCCK", version u16 (2), level u16, record bytes u32,
                        block records u32, capacity u32, reserved u32, first record index u64,
                        tree fingerprint 16 bytes, reserved 12 bytes, CRC32C of bytes 0-59 u32
    64            2×16  durable markers: count u32, epoch u32, tag u32, check u32
    96 + 32·b     2×16  the two slots of block b: end u32, crc u32, tag u32, check u32

``check`` is the CRC32C of the slot's first 12 bytes seeded with its position, so a torn, zeroed
or misplaced slot is never taken for a valid one. The file has a fixed size (allocated when the
segment starts), so writing a slot never needs disk space.

**Writing.** An append writes the records to the segment, then the slot(s) of the block(s) they
touched: records are counted only once their checksum is written, and a crash between the two
leaves records without a checksum, which reopening cuts off like a torn record. The slot that
held a block's value at the last ``flush()`` is *protected*: later appends to that block write the
other slot, so a power loss while a slot is rewritten can never destroy the checksum of records
that were flushed. A new block's slots are both written.

**Durable marker.** ``flush()`` fsyncs the segment and this file, then records the flushed
record count in a marker (two alternating marker slots; the one with the higher epoch wins).
Reopening uses it to tell a crash-torn tail (records past the marker whose checksums do not
hold: cut off silently, as promised for unflushed records) from damage (records the marker
says were flushed but that fail their checksum: reported, never cut silently).

**Reading.** A read of records ``[lo, hi)`` verifies every block it touches up to ``hi`` against a
slot covering at least that much, extending the CRC already verified for that block (each byte
is checked once per process). A reader beside a writer only reads records inside its snapshot,
whose checksums were written before the snapshot was taken, and slots only ever grow (the
writer rewrites the non-protected one), so a chunk the writer is in the middle of writing is
never read, and an overwrite in progress is retried, not reported.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from crc32c import crc32c

from megacontext.store.errors import StorageCorruptionError
from megacontext.store.segment import HEADER_BYTES, os_error

SUMS_MAGIC = b"MCCK"
SUMS_VERSION = 2
MARKERS = 64  # offset of the two durable markers
SLOTS = 96  # offset of block 0's first slot
SLOT = 16  # bytes per slot; a block has two
_HEAD = struct.Struct("<4sHHIIIIQ16s12s")
assert _HEAD.size == 60
_SLOT = struct.Struct("<III")
_TAG_SLOT = 0x544F4C53  # "SLOT"
_TAG_MARK = 0x4B52414D  # "MARK"
_RETRIES = 5  # re-reads of a slot pair that is being rewritten by a concurrent writer


@dataclass(frozen=True, slots=True)
class SumsLayout:
    """What the checksum file of one segment must say (derived from the manifest)."""

    level: int
    record_bytes: int
    block_records: int
    capacity: int
    first_index: int
    tree_fingerprint: bytes

    @property
    def blocks(self) -> int:
        return -(-self.capacity // self.block_records)

    @property
    def file_bytes(self) -> int:
        return SLOTS + 2 * SLOT * self.blocks

    def pack(self) -> bytes:
        body = _HEAD.pack(
            SUMS_MAGIC,
            SUMS_VERSION,
            self.level,
            self.record_bytes,
            self.block_records,
            self.capacity,
            0,
            self.first_index,
            self.tree_fingerprint,
            bytes(12),
        )
        return body + struct.pack("<I", crc32c(body))

    def check(self, data: bytes, path: Path, fix: str) -> None:
        """Raise :class:`StorageCorruptionError` unless ``data`` is this layout's header."""
        if len(data) < HEADER_BYTES:
            raise StorageCorruptionError(
                f"{path}: checksum file header is truncated ({len(data)} of 64 bytes); {fix}"
            )
        if data[:HEADER_BYTES] != self.pack():
            body, (crc,) = data[:60], struct.unpack("<I", data[60:64])
            what = "fails its CRC32C check" if crc32c(body) != crc else "does not match"
            raise StorageCorruptionError(
                f"{path}: checksum file header {what} the manifest's segment layout; {fix}"
            )


def block_records(block_bytes: int, record_bytes: int, capacity: int) -> int:
    """Records per checksum block: about ``block_bytes`` of them, at least one record, at most
    a segment."""
    return max(1, min(capacity, block_bytes // record_bytes))


def _slot_bytes(position: int, end: int, crc: int, tag: int = _TAG_SLOT) -> bytes:
    body = _SLOT.pack(end, crc, tag)
    return body + struct.pack("<I", crc32c(body, position))


def _parse_slot(data: bytes, position: int, tag: int = _TAG_SLOT) -> tuple[int, int] | None:
    """``(end, crc)`` of a valid slot (or ``(count, epoch)`` of a marker), else ``None``."""
    if len(data) < SLOT:
        return None
    end, crc, got_tag = _SLOT.unpack_from(data)
    (check,) = struct.unpack_from("<I", data, 12)
    if got_tag != tag or check != crc32c(data[:12], position):
        return None
    return end, crc


def read_marker(fd: int) -> tuple[int, int]:
    """``(durable count, epoch)`` of the newest valid marker of an open checksum file,
    ``(0, 0)`` when none is valid."""
    data = os.pread(fd, 2 * SLOT, MARKERS)
    best = (0, 0)
    for s in (0, 1):
        mark = _parse_slot(data[SLOT * s : SLOT * (s + 1)], MARKERS + SLOT * s, _TAG_MARK)
        if mark is not None and mark[1] >= best[1]:
            best = mark
    return best


class ChecksumMismatchError(StorageCorruptionError):
    """Records of an open segment fail their checksum (or have none where one is required)."""

    def __init__(self, message: str, lo: int, hi: int):
        super().__init__(message)
        self.lo, self.hi = lo, hi  # record range within the segment


@dataclass
class Scan:
    """What a full check of an open segment found (record indices within the segment)."""

    data_records: int  # whole records in the segment file
    torn_bytes: int  # bytes of a partial trailing record
    extent: int  # records covered by valid slots, contiguously from the start
    verified: int  # records whose checksums hold, contiguously from the start
    durable: int  # records the durable marker says were flushed
    bad: list[tuple[int, int]] = field(default_factory=list)  # ranges failing their checksum

    @property
    def clean(self) -> bool:
        return (
            not self.bad
            and self.verified == self.extent == self.data_records
            and not self.torn_bytes
        )


class SumFile:
    """One open checksum file: slot I/O, verification cache, and the writer's tail state."""

    def __init__(self, path: Path, fd: int, layout: SumsLayout, writable: bool):
        self.path = path
        self.fd = fd
        self.layout = layout
        self.writable = writable
        self.B = layout.block_records
        self.rb = layout.record_bytes
        # verification cache: block -> (records verified from its start, their CRC)
        self._checked: dict[int, tuple[int, int]] = {}
        self.verified = 0  # records verified contiguously from the segment start
        # writer state: the tail block's running CRC and which of its slots is protected
        self._known: dict[int, tuple[int, int]] = {}  # latest (end, crc) this process wrote
        self._tail = (0, 0, 0)  # (block, end, crc)
        self._protected: int | None = None  # slot of the tail block holding flushed records
        self._last_written: int | None = None  # slot(s) written since: 0, 1, or 2 for both
        self._epoch = 0
        self.durable = 0
        # sealing check, fed by the background sha256 thread: CRC of each block as hashed
        self._feed = (0, 0)  # (bytes of records fed, running CRC of the current block)
        self.seal_errors: list[tuple[int, int]] = []

    # -- files -------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, layout: SumsLayout) -> SumFile:
        """Create an empty checksum file, allocated to its full size."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise os_error(exc, path, "creating") from exc
        try:
            os.pwrite(fd, layout.pack(), 0)
            os.ftruncate(fd, layout.file_bytes)
            with contextlib.suppress(OSError):  # not every file system can preallocate
                os.posix_fallocate(fd, 0, layout.file_bytes)
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise os_error(exc, path, "creating") from exc
        return cls(path, fd, layout, writable=True)

    @classmethod
    def open(cls, path: Path, layout: SumsLayout, writable: bool, fix: str) -> SumFile:
        """Open and check the header; raises ``FileNotFoundError`` when it does not exist and
        :class:`StorageCorruptionError` when its header is wrong."""
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            layout.check(os.pread(fd, HEADER_BYTES, 0), path, fix)
        except BaseException:
            os.close(fd)
            raise
        sums = cls(path, fd, layout, writable)
        mark = sums.read_marker()
        sums.durable, sums._epoch = mark
        return sums

    def close(self, sync: bool = False) -> None:
        if self.fd < 0:
            return
        try:
            if sync and self.writable:
                os.fsync(self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1

    # -- slots -------------------------------------------------------------------------------

    def read_slots(self, first: int, stop: int) -> list[list[tuple[int, int]]]:
        """Valid ``(end, crc)`` slots of blocks ``[first, stop)``, each list sorted by end.

        A slot that is neither valid nor blank may be one a concurrent writer is rewriting:
        it is read again (a few times) before it is taken as damaged."""
        stop = min(stop, self.layout.blocks)
        if stop <= first:
            return []
        for attempt in range(_RETRIES):
            data = os.pread(self.fd, 2 * SLOT * (stop - first), SLOTS + 2 * SLOT * first)
            out, torn = [], False
            for i in range(stop - first):
                valid = []
                for s in (0, 1):
                    position = SLOTS + 2 * SLOT * (first + i) + SLOT * s
                    raw = data[2 * SLOT * i + SLOT * s : 2 * SLOT * i + SLOT * (s + 1)]
                    slot = _parse_slot(raw, position)
                    if slot is not None and 1 <= slot[0] <= self.B:
                        valid.append(slot)
                    elif raw.strip(b"\0"):
                        torn = True
                out.append(sorted(set(valid)))
            if not torn or self.writable:  # a writer's own slots are never mid-write
                break
            time.sleep(0.0002 * (attempt + 1))
        return out

    def read_marker(self) -> tuple[int, int]:
        """``(durable count, epoch)`` of the newest valid marker, ``(0, 0)`` when none."""
        return read_marker(self.fd)

    def extent(self, data_records: int) -> int:
        """Records covered by valid slots, contiguously from the start (no data is read), at
        most ``data_records``: a reader's snapshot of the segment."""
        B = self.B
        blocks = -(-data_records // B)
        total = 0
        for b, slots in enumerate(self.read_slots(0, blocks)):
            end = slots[-1][0] if slots else 0
            total = b * B + end
            if end < B:
                break
        return max(0, min(total, data_records, self.layout.capacity))

    # -- verification ------------------------------------------------------------------------

    def verify(self, data_fd: int, lo: int, hi: int) -> None:
        """Check records ``[lo, hi)`` of the segment; raise :class:`ChecksumMismatchError`."""
        if hi <= self.verified or hi <= lo:
            return
        B = self.B
        for b in range(lo // B, (hi - 1) // B + 1):
            need = min(hi, (b + 1) * B) - b * B
            done, crc = self._checked.get(b, (0, 0))
            if done >= need:
                continue
            self._verify_block(data_fd, b, need, done, crc)
        self._advance_verified()

    def _verify_block(self, data_fd: int, b: int, need: int, done: int, crc: int) -> None:
        B, rb = self.B, self.rb
        for attempt in range(_RETRIES):
            known = self._known.get(b)
            slots = [known] if known is not None else self.read_slots(b, b + 1)[0]
            candidates = [s for s in slots if s[0] >= need]
            for end, want in candidates:
                offset = HEADER_BYTES + (b * B + done) * rb
                data = os.pread(data_fd, (end - done) * rb, offset)
                if len(data) == (end - done) * rb and crc32c(data, crc) == want:
                    self._checked[b] = (end, want)
                    return
            if candidates or known is not None:
                break  # a slot covers the range and the bytes do not match: damage
            time.sleep(0.001 * (attempt + 1))  # a slot being rewritten: read it again
        first = self.layout.first_index + b * B
        reason = (
            "fail their CRC32C checksum"
            if candidates
            else "have no valid checksum (their checksum slot is missing or damaged)"
        )
        raise ChecksumMismatchError(
            f"records [{first + done}, {first + need}) of level {self.layout.level} {reason} "
            f"({self.path})",
            b * B + done,
            b * B + need,
        )

    def _advance_verified(self) -> None:
        B = self.B
        while True:
            b = self.verified // B
            done = self._checked.get(b, (0, 0))[0]
            if b * B + done <= self.verified:
                return
            self.verified = b * B + done
            if done < B:
                return

    def scan(self, data_fd: int, data_size: int, first_block: int = 0) -> Scan:
        """Check every block from ``first_block`` on against its slots, reading each record
        once. ``data_size`` is the segment file's size in bytes."""
        B, rb = self.B, self.rb
        data_records, torn = divmod(max(0, data_size - HEADER_BYTES), rb)
        slots = self.read_slots(0, self.layout.blocks)
        extent = 0
        for b, pair in enumerate(slots):
            end = pair[-1][0] if pair else 0
            extent = b * B + end
            if end < B:
                break
        extent = min(extent, self.layout.capacity)
        durable = min(self.durable, self.layout.capacity)
        verified: int | None = None
        bad: list[tuple[int, int]] = []
        stop_block = -(-extent // B)
        for b in range(first_block, stop_block):
            pair = slots[b]
            want = min(B, extent - b * B)
            have = min(want, max(0, data_records - b * B))
            data = os.pread(data_fd, have * rb, HEADER_BYTES + b * B * rb) if have else b""
            good, crc, pos = 0, 0, 0
            for end, expected in pair:
                if end > have:
                    break
                crc = crc32c(data[pos * rb : end * rb], crc)
                pos = end
                if crc == expected:
                    good = end
            if good < want:
                bad.append((b * B + good, b * B + want))
                if verified is None:
                    verified = b * B + good
        if verified is None:
            verified = extent
        if first_block == 0 and not bad:
            self.verified = max(self.verified, verified)
        return Scan(data_records, torn, extent, verified, durable, bad)

    # -- writing -----------------------------------------------------------------------------

    def resume(self, data_fd: int, count: int) -> None:
        """Take over the tail after opening for writing: ``count`` records are kept, and a slot
        of the block holding the last of them must cover exactly them (:meth:`cut` and
        :meth:`rebuild` leave it so); raises :class:`ChecksumMismatchError` otherwise."""
        B, rb = self.B, self.rb
        b, end = divmod(count, B)
        self._protected = self._last_written = None
        if end == 0:
            self._tail = (b, 0, 0)
            return
        data = os.pread(data_fd, end * rb, HEADER_BYTES + b * B * rb)
        crc = crc32c(data)
        self._tail = (b, end, crc)
        raw = os.pread(self.fd, 2 * SLOT, SLOTS + 2 * SLOT * b)
        for s in (0, 1):
            slot = _parse_slot(raw[SLOT * s : SLOT * (s + 1)], SLOTS + 2 * SLOT * b + SLOT * s)
            if slot == (end, crc):
                self._protected = s
                break
        if self._protected is None:
            first = self.layout.first_index + b * B
            raise ChecksumMismatchError(
                f"records [{first}, {first + end}) of level {self.layout.level} fail their CRC32C "
                f"checksum ({self.path})",
                b * B,
                b * B + end,
            )
        self._known[b] = (end, crc)

    def record(self, start: int, data: memoryview) -> None:
        """Write the checksums of records ``[start, start + n)`` just written to the segment
        (``data`` is their bytes); raises a store error when the write fails (the caller then
        cuts the records off again)."""
        B, rb = self.B, self.rb
        n = len(data) // rb
        tail_b, tail_end, tail_crc = self._tail
        o = start - tail_b * B
        if o > 0 and o + n < B:  # the common case (decoding): inside the tail block
            assert o == tail_end, "appends must continue the tail block"
            crc = crc32c(data, tail_crc)
            slot = 0 if self._protected is None else 1 - self._protected
            position = SLOTS + 2 * SLOT * tail_b + SLOT * slot
            self._pwrite(_slot_bytes(position, o + n, crc), position)
            self._tail = (tail_b, o + n, crc)
            self._known[tail_b] = (o + n, crc)
            self._last_written = slot
            return
        protected = self._protected
        updates: list[tuple[int, tuple[int, ...], int, int]] = []
        pos, off, stop = start, 0, start + n
        if o > 0:  # finish the tail block first
            assert o == tail_end, "appends must continue the tail block"
            take = min(B - o, n)
            crc = crc32c(data[: take * rb], tail_crc)
            slots = (0,) if protected is None else (1 - protected,)
            updates.append((tail_b, slots, o + take, crc))
            tail_end, tail_crc = o + take, crc
            pos, off = start + take, take * rb
        block_bytes = B * rb
        while pos < stop:  # new blocks: nothing in them to protect, both slots get the value
            b = pos // B
            take = min(B, stop - pos)
            crc = crc32c(data[off : off + take * rb])
            updates.append((b, (0, 1), take, crc))
            tail_b, tail_end, tail_crc = b, take, crc
            pos += take
            off += block_bytes
        self._write_slots(updates)
        known = self._known
        for b, _slots, end, crc in updates:
            known[b] = (end, crc)
        last_slots = updates[-1][1]
        if len(last_slots) == 2:
            protected = None  # the tail block is new: nothing in it was flushed
        self._last_written = 2 if len(last_slots) == 2 else last_slots[0]
        self._tail, self._protected = (tail_b, tail_end, tail_crc), protected
        if tail_end == B:
            self._tail, self._protected, self._last_written = (tail_b + 1, 0, 0), None, None

    def _write_slots(self, updates: list[tuple[int, tuple[int, ...], int, int]]) -> None:
        """Write the given slots of each block, merging neighbouring writes into one."""
        runs: list[tuple[int, list[bytes]]] = []  # (offset, slot bytes), contiguous runs
        end_of_run = -1
        for b, slots, end, crc in updates:
            base = SLOTS + 2 * SLOT * b
            for s in slots:
                position = base + SLOT * s
                if position != end_of_run:
                    runs.append((position, []))
                runs[-1][1].append(_slot_bytes(position, end, crc))
                end_of_run = position + SLOT
        for offset, parts in runs:
            self._pwrite(b"".join(parts), offset)

    def _pwrite(self, data: bytes, offset: int) -> None:
        done = 0
        try:
            while done < len(data):
                done += os.pwrite(self.fd, data[done:], offset + done)
        except OSError as exc:
            raise os_error(exc, self.path, "writing") from exc

    def mark_durable(self, count: int) -> None:
        """Call after fsyncing the segment and this file: the slots written so far are durable
        now (the tail block's newest slot becomes protected) and ``count`` records are flushed."""
        if self._last_written is not None:
            self._protected = 0 if self._last_written == 2 else self._last_written
            self._last_written = None
        if count == self.durable:
            return
        self._epoch += 1
        position = MARKERS + SLOT * (self._epoch % 2)
        self._pwrite(_slot_bytes(position, count, self._epoch, _TAG_MARK), position)
        self.durable = count

    def cut(self, data_fd: int, count: int) -> None:
        """Cut the segment to its first ``count`` records (already verified by the caller):
        marker, then slots, then the segment file, each made durable before the next, so a
        crash at any point reopens to the old or the new length, never to damage."""
        B, rb = self.B, self.rb
        b, end = divmod(count, B)
        if end:
            self.verify(data_fd, b * B, count)  # never re-checksum damaged records
        if self.durable > count:
            self._epoch += 1
            position = MARKERS + SLOT * (self._epoch % 2)
            self._pwrite(_slot_bytes(position, count, self._epoch, _TAG_MARK), position)
            self.durable = count
            os.fsync(self.fd)
        crc = 0
        if end:
            crc = crc32c(os.pread(data_fd, end * rb, HEADER_BYTES + b * B * rb))
            self._write_slots([(b, (0, 1), end, crc)])
            os.fsync(self.fd)
        first_zero = b + 1 if end else b
        if first_zero < self.layout.blocks:
            span = SLOTS + 2 * SLOT * first_zero
            self._pwrite(bytes(self.layout.file_bytes - span), span)
            os.fsync(self.fd)
        os.ftruncate(data_fd, HEADER_BYTES + count * rb)
        os.fsync(data_fd)
        for key in [k for k in self._checked if k >= b]:
            del self._checked[key]
        for key in [k for k in self._known if k >= b]:
            del self._known[key]
        if end:
            self._checked[b] = self._known[b] = (end, crc)
        self.verified = min(self.verified, count)
        self._tail = (b, end, crc)
        self._protected = 0 if end else None
        self._last_written = None
        self.reset_feed()

    def rebuild(self, data_fd: int, count: int) -> None:
        """Checksum records ``[0, count)`` as they are now (migration, or a lost checksum
        file): both slots of every block, then the marker, then fsync."""
        B, rb = self.B, self.rb
        updates: list[tuple[int, tuple[int, ...], int, int]] = []
        for b in range(-(-count // B)):
            end = min(B, count - b * B)
            data = os.pread(data_fd, end * rb, HEADER_BYTES + b * B * rb)
            updates.append((b, (0, 1), end, crc32c(data)))
        self._write_slots(updates)
        span = SLOTS + 2 * SLOT * len(updates)
        if span < self.layout.file_bytes:
            self._pwrite(bytes(self.layout.file_bytes - span), span)
        self._epoch += 1
        position = MARKERS + SLOT * (self._epoch % 2)
        self._pwrite(_slot_bytes(position, count, self._epoch, _TAG_MARK), position)
        self.durable = count
        os.fsync(self.fd)
        self._checked = {b: (end, crc) for b, _p, end, crc in updates}
        self._known = dict(self._checked)
        self.verified = count
        self.resume(data_fd, count)

    # -- the sealing check -------------------------------------------------------------------

    def feed(self, data: bytes, file_offset: int) -> None:
        """Check whole blocks as the background sha256 reads the segment: ``data`` are the
        file's bytes at ``file_offset`` (header included). Mismatches go to ``seal_errors``."""
        B, rb = self.B, self.rb
        fed, crc = self._feed
        skip = max(0, HEADER_BYTES - file_offset)
        view = memoryview(data)[skip:]
        block_bytes = B * rb
        while len(view):
            into = fed % block_bytes
            take = min(len(view), block_bytes - into)
            crc = crc32c(view[:take], crc)
            view = view[take:]
            fed += take
            if fed % block_bytes == 0:
                b = fed // block_bytes - 1
                want = self._known.get(b)
                if want is None:
                    slots = self.read_slots(b, b + 1)[0]
                    want = slots[-1] if slots else None
                if want is None or want != (B, crc):
                    first = self.layout.first_index + b * B
                    self.seal_errors.append((first, first + B))
                crc = 0
        self._feed = (fed, crc)

    def reset_feed(self) -> None:
        self._feed = (0, 0)
        self.seal_errors = []
