"""Metadata and provenance: the same queries over SQLite and a real PostgreSQL server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from megacontext.errors import InvalidInputError
from megacontext.store.metadata import MetadataDB, schema


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataDB]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/meta.sqlite"
    else:
        url = request.getfixturevalue("postgres_url")
        engine = sa.create_engine(url)
        schema.drop_all(engine)  # each test starts from an empty schema
        engine.dispose()
    database = MetadataDB(url)
    assert database.dialect == request.param
    yield database
    database.close()


def _ingest(db: MetadataDB) -> tuple[str, int, int]:
    tree = uuid.uuid4().hex
    db.register_tree(tree, "/trees/t", K=4, dim=8, fingerprints={"base": "b", "tokenizer": "t"})
    a = db.add_source(
        "file:///src/a.py", "code", b"print('a')\n" * 10, {"repo": "demo", "lang": "py"}
    )
    b = db.add_source("file:///notes/b.md", "text", b"# notes\n", {"author": "me"})
    db.add_span(tree, 0, 0, 10, a, bytes_=(0, 40), lines=(1, 4), gist_version="g1", tags=["x"])
    db.add_span(tree, 0, 10, 20, a, bytes_=(40, 110), lines=(4, 10), gist_version="g1")
    db.add_span(tree, 0, 20, 37, b, bytes_=(0, 8), lines=(1, 1), gist_version="g1", tags=["note"])
    db.add_span(tree, 0, 37, 64, a, bytes_=(0, 40), lines=(1, 4), gist_version="g1")
    return tree, a, b


def test_provenance_of_a_token_range(db: MetadataDB) -> None:
    tree, _a, _b = _ingest(db)
    found = db.provenance(tree, 8, 22)
    assert [(p.source.uri, p.start_index, p.stop_index) for p in found] == [
        ("file:///src/a.py", 0, 10),
        ("file:///src/a.py", 10, 20),
        ("file:///notes/b.md", 20, 37),
    ]
    assert found[0].line_range == (1, 4) and found[0].byte_range == (0, 40)
    assert found[0].tags == ["x"] and found[0].gist_version == "g1"
    assert found[2].source.meta == {"author": "me"}
    assert db.provenance(tree, 64, 100) == []


def test_provenance_of_a_node(db: MetadataDB) -> None:
    tree, _a, _b = _ingest(db)
    # K=4: node (2, 1) covers tokens [16, 32): the end of span 2 of a.py and part of b.md
    uris = [p.source.uri for p in db.provenance_of_node(tree, 2, 1)]
    assert uris == ["file:///src/a.py", "file:///notes/b.md"]
    assert [p.line_range for p in db.provenance_of_node(tree, 0, 25)] == [(1, 1)]
    with pytest.raises(InvalidInputError, match="unknown tree"):
        db.provenance_of_node("nope", 1, 0)


def test_nodes_covering_a_source(db: MetadataDB) -> None:
    tree, a, b = _ingest(db)
    covering = db.nodes_covering(tree, b, levels=2)
    assert covering[0] == [range(20, 37)]
    assert covering[1] == [range(5, 10)]  # tokens 20..36 -> blocks 5..9
    assert covering[2] == [range(1, 3)]
    assert db.nodes_covering(tree, a, levels=1)[0] == [range(0, 20), range(37, 64)]


def test_list_sources_and_idempotent_add(db: MetadataDB) -> None:
    _ingest(db)
    again = db.add_source("file:///src/a.py", "code", b"print('a')\n" * 10)
    sources = db.list_sources()
    assert [s.uri for s in sources] == ["file:///src/a.py", "file:///notes/b.md"]
    assert again == sources[0].id
    assert sources[0].meta == {"repo": "demo", "lang": "py"}
    assert len(sources[0].content_hash) == 64
    assert [s.uri for s in db.list_sources(kind="text")] == ["file:///notes/b.md"]


def test_bad_spans_are_refused(db: MetadataDB) -> None:
    tree, a, _ = _ingest(db)
    with pytest.raises(InvalidInputError, match="start < stop"):
        db.add_span(tree, 0, 5, 5, a)
    with pytest.raises(InvalidInputError, match="unknown tree"):
        db.add_span("no-such-tree", 0, 0, 1, a)
    with pytest.raises(InvalidInputError, match="non-empty uri"):
        db.add_source("", "code", b"")


def test_bad_url_is_a_clear_error() -> None:
    with pytest.raises(InvalidInputError, match="bad metadata database URL"):
        MetadataDB("nosuchdb://x")


def test_store_metadata_defaults_to_sqlite_inside_the_store(tmp_path: Path) -> None:
    from megacontext.store import Fingerprints, LocalStore

    store = LocalStore.create(tmp_path / "t", dim=4, K=4, fingerprints=Fingerprints(base="b"))
    db = store.metadata()
    assert db.dialect == "sqlite" and (tmp_path / "t" / "meta.sqlite").exists()
    source = db.add_source("file:///x.txt", "text", b"hello")
    db.add_span(store.manifest.tree_id, 0, 0, 4, source, lines=(1, 1))
    assert [p.source.uri for p in db.provenance_of_node(store.manifest.tree_id, 1, 0)] == [
        "file:///x.txt"
    ]
    db.close()
    store.close()
    with LocalStore.open(tmp_path / "t") as again:
        assert again.compact() == []  # meta.sqlite is not garbage
        assert again.verify() == []
