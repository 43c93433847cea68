"""Reading people's files for ingest: which files a set of paths names, and their text.

Directories are walked recursively (hidden files and directories skipped); a file reached twice
— through a symlink, or named twice — is read once. Text is decoded as UTF-8 when it is UTF-8,
as the encoding the user names, else as the encoding a maintained detector
(charset-normalizer) finds; a file is skipped as binary only when no text encoding fits, and
the caller hears about every file it skipped and why.
"""

from __future__ import annotations

import codecs
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from megacontext.errors import InvalidInputError

STDIN = Path("-")


@dataclass(frozen=True)
class SourceFile:
    """One file to ingest: where it was named (``path``) and what it is (``resolved``)."""

    path: Path
    resolved: Path


@dataclass(frozen=True)
class SourceText:
    """A file's text and how it was decoded (``detected``: found by the detector)."""

    text: str
    encoding: str
    detected: bool = False


def check_encoding(encoding: str | None) -> str | None:
    """The codec name of ``encoding`` (``None`` passes), or an error naming it."""
    if encoding is None:
        return None
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise InvalidInputError(
            f"unknown text encoding {encoding!r}; use a Python codec name such as utf-8, "
            "latin-1, cp1252 or utf-16"
        ) from None


def discover(paths: list[Path]) -> tuple[list[SourceFile], list[Path]]:
    """The files ``paths`` name, in order, each real file once; and the paths dropped as
    repeats of one already listed (the same file through a symlink, or named twice).

    Raises:
        InvalidInputError: a path does not exist.
    """
    found: list[SourceFile] = []
    repeats: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        resolved = path.resolve()
        if resolved in seen:
            repeats.append(path)
            return
        seen.add(resolved)
        found.append(SourceFile(path, resolved))

    for path in paths:
        if path == STDIN:
            found.append(SourceFile(STDIN, STDIN))
        elif path.is_dir():
            for root, dirs, files in os.walk(path, followlinks=False):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    child = Path(root) / name
                    if not name.startswith(".") and child.is_file():
                        add(child)
        elif path.is_file():
            add(path)
        else:
            raise InvalidInputError(f"{path} does not exist (or is not a file or directory)")
    return found, repeats


def read_text(source: SourceFile, encoding: str | None = None) -> SourceText | None:
    """The text of ``source``, or ``None`` when it is binary or empty.

    Raises:
        InvalidInputError: ``encoding`` was given and the file is not in it.
    """
    data = sys.stdin.buffer.read() if source.path == STDIN else source.resolved.read_bytes()
    return decode_text(data, encoding, str(source.path), "--encoding")


def decode_text(  # noqa: PLR0911  (each way bytes can turn out, in the order it is tried)
    data: bytes, encoding: str | None = None, name: str = "the text", flag: str = "encoding"
) -> SourceText | None:
    """``data`` as text: in ``encoding`` when given, else UTF-8, else the encoding
    charset-normalizer detects; ``None`` when it is binary or empty. ``name`` and ``flag`` say,
    in an error, what was read and how its encoding is given.

    Raises:
        InvalidInputError: ``encoding`` was given and ``data`` is not in it.
    """
    if not data.strip():
        return None
    if encoding is not None:
        try:
            return SourceText(_strip_bom(data.decode(encoding)), encoding)
        except UnicodeDecodeError as exc:
            raise InvalidInputError(
                f"{name} is not {encoding} text (byte {exc.start}: {exc.reason}); give its "
                f"encoding with {flag}, or leave {flag} out to detect it"
            ) from None
    if not _utf16_bom(data):
        if b"\x00" in data:
            return None  # NUL bytes and no UTF-16/32 byte order mark: binary
        try:
            return SourceText(_strip_bom(data.decode("utf-8")), "utf-8")
        except UnicodeDecodeError:
            pass
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is None or best.encoding is None:
        return None
    text = _strip_bom(str(best))
    if not text.strip() or "\x00" in text:
        return None
    return SourceText(text, best.encoding, detected=True)


def _utf16_bom(data: bytes) -> bool:
    return data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE))


def _strip_bom(text: str) -> str:
    return text[1:] if text.startswith("\ufeff") else text


__all__ = [
    "STDIN",
    "SourceFile",
    "SourceText",
    "check_encoding",
    "decode_text",
    "discover",
    "read_text",
]
