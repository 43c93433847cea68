"""Provenance of the history: which source, bytes and lines every token came from, and citations.

Ingest records one provenance row per piece of a source that falls in one LOD1 block of the
history (a block can hold the end of one file and the start of the next), each with the byte and
line range of the source it covers. Focus expands whole blocks, so a span that came into view for
a question is cited with the exact lines it holds (:func:`cite`).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from megacontext.store.metadata import MetadataDB


@dataclass(frozen=True)
class SpanRow:
    """Tokens ``[start, stop)`` of the history, and the bytes and lines of the source they hold.

    ``lines`` are 1-based and inclusive; both ranges are ``None`` when the source is token ids or
    the tokenizer gives no offsets.
    """

    start: int
    stop: int
    bytes: tuple[int, int] | None = None
    lines: tuple[int, int] | None = None


def plan_spans(
    text: str | None,
    offsets: Sequence[tuple[int, int]] | np.ndarray | None,
    first: int,
    count: int,
    K: int,
    first_line: int = 1,
) -> list[SpanRow]:
    """The provenance rows of ``count`` tokens appended at history position ``first``.

    ``offsets`` are the tokens' ``[start, end)`` characters in ``text`` (from
    :meth:`~megacontext.models.adapter.BaseAdapter.encode_with_offsets`). Without them the source
    gets one row for all its tokens. ``first_line`` numbers the text's first line: 0 when the
    text opens with a header line the source does not have (a file's path), so that lines are
    the source's own; lines before line 1 count as line 1.
    """
    stop = first + count
    if text is None or offsets is None or len(offsets) != count or count == 0:
        return [SpanRow(first, stop)] if count else []
    pairs = np.asarray(offsets, dtype=np.int64).reshape(count, 2)
    starts = np.maximum.accumulate(pairs[:, 0])
    ends = np.maximum.accumulate(pairs[:, 1])
    ends = np.maximum(ends, starts)
    # Byte offset of every character (text is stored and hashed as UTF-8).
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    widths = 1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000)
    byte_at = np.concatenate([[0], np.cumsum(widths, dtype=np.int64)])
    newlines = [i for i, ch in enumerate(text) if ch == "\n"]
    rows = []
    cut = first
    while cut < stop:
        block_end = min(stop, (cut // K + 1) * K)
        lo, hi = cut - first, block_end - first  # token indices within the source
        char_lo, char_hi = int(starts[lo]), int(ends[hi - 1])
        # Line of a character: 1 + newlines before it; the last line is that of the last
        # character the span holds (a span ending in "\n" ends on that newline's line).
        line_lo = max(1, first_line + bisect.bisect_left(newlines, char_lo))
        line_hi = max(1, first_line + bisect.bisect_left(newlines, max(char_hi - 1, char_lo)))
        rows.append(
            SpanRow(
                cut,
                block_end,
                (int(byte_at[char_lo]), int(byte_at[char_hi])),
                (line_lo, line_hi),
            )
        )
        cut = block_end
    return rows


@dataclass(frozen=True)
class Citation:
    """Where a span of the history came from: the source and the lines it covers.

    ``source`` is the source's path (or URI); ``lines`` 1-based inclusive, ``None`` when not
    known; ``tokens`` the history positions; ``score`` the focus score that brought it into view
    (higher is more relevant); ``text`` the span's text.
    """

    source: str | None
    lines: tuple[int, int] | None
    tokens: tuple[int, int]
    score: float
    text: str

    def label(self) -> str:
        """``path:first-last`` (or the token range when the source is unknown)."""
        if self.source is None:
            return f"tokens {self.tokens[0]:,}–{self.tokens[1]:,}"
        if self.lines is None:
            return self.source
        first, last = self.lines
        return f"{self.source}:{first}" if first == last else f"{self.source}:{first}-{last}"


def cite(
    db: MetadataDB | None, tree_id: str, start: int, stop: int, score: float, text: str
) -> list[Citation]:
    """Citations of the tokens ``[start, stop)``: one per source they come from, in history
    order, its line range merged over the provenance rows it spans. Without provenance (an
    in-memory session, or tokens no source recorded) the span is cited by its token range."""
    found: list[Citation] = []
    rows = db.provenance(tree_id, start, stop) if db is not None else []
    for row in rows:
        label = str(row.source.meta.get("path") or row.source.uri)
        lo, hi = max(start, row.start_index), min(stop, row.stop_index)
        last = found[-1] if found else None
        if last is not None and last.source == label and last.tokens[1] == lo:
            found[-1] = Citation(
                label, _merge(last.lines, row.line_range), (last.tokens[0], hi), score, text
            )
        else:
            found.append(Citation(label, row.line_range, (lo, hi), score, text))
    return found or [Citation(None, None, (start, stop), score, text)]


def _merge(a: tuple[int, int] | None, b: tuple[int, int] | None) -> tuple[int, int] | None:
    if a is None or b is None:
        return a or b
    return min(a[0], b[0]), max(a[1], b[1])


def raw_runs(before: set[int], after: Sequence[int]) -> list[tuple[int, int]]:
    """Token ranges ``[start, stop)`` raw in ``after`` (sorted positions) but not in ``before``."""
    runs: list[list[int]] = []
    for pos in after:
        if pos in before:
            continue
        if runs and runs[-1][1] == pos:
            runs[-1][1] = pos + 1
        else:
            runs.append([pos, pos + 1])
    return [(a, b) for a, b in runs]


__all__ = ["Citation", "SpanRow", "cite", "plan_spans", "raw_runs"]
