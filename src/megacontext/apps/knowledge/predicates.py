"""Metadata predicates over sources: ``kind=spec AND version=latest``, time ranges, tags.

Grammar (case-insensitive keywords, AND binds tighter than OR, parentheses group)::

    predicate := conjunction ("OR" conjunction)*
    conjunction := term ("AND" term)*
    term := "NOT" term | "(" predicate ")" | FIELD OP VALUE
    OP := "=" | "!=" | "<" | "<=" | ">" | ">="

Fields (:data:`FIELDS`) are a source's knowledge metadata
(:mod:`megacontext.apps.knowledge.documents`):

* ``partition``, ``kind``, ``doc``, ``owner``, ``path``: text; ``=`` and ``!=`` only;
* ``version``: an integer, or ``latest`` (the highest version of the same document in the same
  partition); every operator;
* ``time``: an ISO 8601 date or date-time (``2026-03-01``, ``2026-03-01T12:00``); every operator;
* ``tag``: ``tag=X`` holds when X is one of the source's tags (``!=``: when it is not).

A value may be quoted (``owner="Ana Lima"``). A field the grammar does not know, an operator a
field does not take, or a value of the wrong type is an
:class:`~megacontext.errors.InvalidInputError` that names it and lists what is allowed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from megacontext.errors import InvalidInputError

TEXT_FIELDS = ("partition", "kind", "doc", "owner", "path")
FIELDS = (*TEXT_FIELDS, "version", "time", "tag")
OPERATORS = ("<=", ">=", "!=", "=", "<", ">")
LATEST = "latest"

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<paren>[()])
      | (?P<op><=|>=|!=|=|<|>)
      | "(?P<dq>[^"]*)"
      | '(?P<sq>[^']*)'
      | (?P<word>[^\s()<>=!"']+)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class SourceFacts:
    """What a predicate reads of one source: its metadata and the latest version of its
    document (in its partition)."""

    meta: Mapping[str, Any]
    latest_version: int | None


Test = Callable[[SourceFacts], bool]


@dataclass(frozen=True)
class Predicate:
    """A parsed predicate; ``text`` as written."""

    text: str
    test: Test

    def __call__(self, facts: SourceFacts) -> bool:
        return self.test(facts)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, at = [], 0
    text = text.rstrip()
    while at < len(text):
        m = _TOKEN.match(text, at)
        if m is None or m.end() == at:
            raise InvalidInputError(
                f"cannot read the predicate {text!r} at {text[at:]!r}; write FIELD=VALUE terms "
                "joined by AND / OR (e.g. kind=spec AND version=latest)"
            )
        at = m.end()
        kind = m.lastgroup
        assert kind is not None
        value = m.group(kind)
        out.append(("value" if kind in ("dq", "sq") else kind, value))
    return out


def _time(value: str, what: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(
            f"{what}: {value!r} is not an ISO 8601 date or date-time (e.g. 2026-03-01 or "
            "2026-03-01T12:00)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _term(field: str, op: str, value: str) -> Test:
    name = field.lower()
    if name not in FIELDS:
        raise InvalidInputError(
            f"unknown field {field!r} in the predicate; fields: {', '.join(FIELDS)}"
        )
    compare = _COMPARE[op]
    if name in TEXT_FIELDS or name == "tag":
        if op not in ("=", "!="):
            raise InvalidInputError(
                f"{name} is text: compare it with = or !=, not {op} ({name}{op}{value})"
            )
        if name == "tag":
            return lambda f: compare(True, value in (f.meta.get("tags") or []))
        return lambda f: compare(str(f.meta.get(name, "")), value)
    if name == "version":
        if value.lower() == LATEST:
            if op not in ("=", "!="):
                raise InvalidInputError(f"version={LATEST} takes = or !=, not {op}")
            return lambda f: compare(
                f.latest_version is not None and _version(f) == f.latest_version, True
            )
        try:
            wanted = int(value)
        except ValueError:
            raise InvalidInputError(
                f"version must be an integer or {LATEST!r}, got {value!r}"
            ) from None
        return lambda f: _version(f) is not None and compare(_version(f), wanted)
    when = _time(value, f"time{op}{value}")

    def at(f: SourceFacts) -> bool:
        stamp = f.meta.get("time")
        return stamp is not None and compare(_time(str(stamp), "a source's time"), when)

    return at


def _version(facts: SourceFacts) -> int | None:
    v = facts.meta.get("version")
    return int(v) if isinstance(v, int | str) and str(v).lstrip("-").isdigit() else None


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokens(text)
        self.at = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token[0] == "word" and token[1].upper() == word:
            self.at += 1
            return True
        return False

    def fail(self, what: str) -> InvalidInputError:
        return InvalidInputError(
            f"the predicate {self.text!r} {what}; write FIELD=VALUE terms joined by AND / OR "
            "(e.g. kind=spec AND version=latest)"
        )

    def predicate(self) -> Test:
        parts = [self.conjunction()]
        while self.keyword("OR"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else (lambda f: any(p(f) for p in parts))

    def conjunction(self) -> Test:
        parts = [self.term()]
        while self.keyword("AND"):
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else (lambda f: all(p(f) for p in parts))

    def term(self) -> Test:
        if self.keyword("NOT"):
            inner = self.term()
            return lambda f: not inner(f)
        token = self.peek()
        if token is None:
            raise self.fail("ends where a term is expected")
        if token == ("paren", "("):
            self.at += 1
            inner = self.predicate()
            if self.peek() != ("paren", ")"):
                raise self.fail("has an unclosed '('")
            self.at += 1
            return inner
        if token[0] != "word":
            raise self.fail(f"has {token[1]!r} where a field name is expected")
        self.at += 1
        op = self.peek()
        if op is None or op[0] != "op":
            raise self.fail(f"has no operator after {token[1]!r} (use =, !=, <, <=, >, >=)")
        self.at += 1
        value = self.peek()
        if value is None or value[0] not in ("word", "value"):
            raise self.fail(f"has no value after {token[1]}{op[1]}")
        self.at += 1
        return _term(token[1], op[1], value[1])


def parse_predicate(text: str) -> Predicate:
    """Parse ``text`` (see the module docstring).

    Raises:
        InvalidInputError: Empty text, a syntax error, an unknown field, an operator the field
            does not take, or a value of the wrong type — each named.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(
            "the predicate is empty; write FIELD=VALUE terms joined by AND / OR (e.g. "
            "kind=spec AND version=latest)"
        )
    parser = _Parser(text)
    test = parser.predicate()
    leftover = parser.peek()
    if leftover is not None:
        raise parser.fail(f"has {leftover[1]!r} after a complete term (join terms with AND / OR)")
    return Predicate(text.strip(), test)


__all__ = ["FIELDS", "LATEST", "Predicate", "SourceFacts", "parse_predicate"]
