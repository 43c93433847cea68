"""Annotations on spans: history, optimistic concurrency and bad input, over SQLite and a real
PostgreSQL server."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from megacontext.errors import InvalidInputError
from megacontext.store.annotations import (
    AnnotationConflictError,
    AnnotationNotFoundError,
    Annotations,
)
from megacontext.store.metadata import MetadataDB, schema


@pytest.fixture()
def notes(metadata_url: str) -> Iterator[Annotations]:
    db = MetadataDB(metadata_url)
    tree = uuid.uuid4().hex
    db.register_tree(tree, "/trees/t", K=4, dim=8, fingerprints={"base": "b"})
    yield Annotations(db, tree)
    db.close()


def test_create_edit_delete_keep_a_history(notes: Annotations) -> None:
    first = notes.create(1, 8, 12, "the harbour scene", ["places"], "ana")
    assert (first.version, first.created_by, first.tags) == (1, "ana", ["places"])
    edited = notes.edit(first.id, 1, "the harbour at dusk", ["places", "time"], "ben")
    assert (edited.version, edited.note, edited.updated_by) == (2, "the harbour at dusk", "ben")
    assert edited.created_by == "ana" and edited.updated_at >= edited.created_at
    notes.create(0, 0, 3, "", ["greeting"], "ana")
    assert [a.start for a in notes.overlapping()] == [0, 8]
    assert [a.start for a in notes.overlapping(5, 9)] == [8]  # overlaps [5, 9)
    assert notes.overlapping(12, 20) == []
    notes.delete(first.id, 2, "cy")
    assert [a.start for a in notes.overlapping()] == [0]
    with pytest.raises(AnnotationNotFoundError):
        notes.get(first.id)
    history = notes.history(first.id)
    assert [(e.action, e.version, e.actor) for e in history] == [
        ("create", 1, "ana"),
        ("edit", 2, "ben"),
        ("delete", 3, "cy"),
    ]
    assert history[1].note == "the harbour at dusk" and history[1].tags == ["places", "time"]


def test_an_edit_of_a_stale_version_conflicts_and_loses_nothing(notes: Annotations) -> None:
    note = notes.create(1, 0, 4, "v1", [], "ana")
    notes.edit(note.id, 1, "ana's edit", [], "ana")
    with pytest.raises(AnnotationConflictError, match="version 2, not 1") as caught:
        notes.edit(note.id, 1, "ben's edit of v1", [], "ben")
    assert caught.value.current == 2
    assert notes.get(note.id).note == "ana's edit"
    with pytest.raises(AnnotationConflictError):
        notes.delete(note.id, 1, "ben")
    assert notes.get(note.id).version == 2


def test_concurrent_edits_of_one_version_let_exactly_one_win(notes: Annotations) -> None:
    note = notes.create(1, 0, 4, "v1", [], "ana")
    outcomes: list[str] = []
    start = threading.Barrier(6)

    def edit(who: str) -> None:
        start.wait()
        try:
            notes.edit(note.id, 1, f"{who} was here", [], who)
            outcomes.append(who)
        except AnnotationConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=edit, args=(f"user{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o != "conflict"]
    assert len(outcomes) == 6 and len(winners) == 1
    final = notes.get(note.id)
    assert final.version == 2 and final.note == f"{winners[0]} was here"
    assert [e.action for e in notes.history(note.id)] == ["create", "edit"]


@pytest.mark.parametrize(
    ("note", "tags", "actor", "message"),
    [
        ("", [], "ana", "a note or at least one tag"),
        ("x" * 10_001, [], "ana", "at most 10000 characters"),
        ("ok", ["has space"], "ana", "tag 'has space' is not valid"),
        ("ok", ["t"] * 21, "ana", "at most 20"),
        ("ok", [], "  ", "who made it"),
    ],
)
def test_bad_annotations_are_refused_by_name(
    notes: Annotations, note: str, tags: list[str], actor: str, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        notes.create(1, 0, 4, note, tags, actor)
    assert notes.overlapping() == []


def test_unknown_ids_and_other_trees(notes: Annotations) -> None:
    note = notes.create(1, 0, 4, "mine", [], "ana")
    other = Annotations(notes.db, uuid.uuid4().hex)
    for call in (
        lambda: other.get(note.id),
        lambda: other.edit(note.id, 1, "not yours", [], "eve"),
        lambda: other.history(note.id),
        lambda: notes.get(note.id + 1000),
    ):
        with pytest.raises(AnnotationNotFoundError):
            call()
    assert notes.get(note.id).note == "mine"


def test_a_database_without_the_tables_reads_as_unannotated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.sqlite"
    engine = sa.create_engine(url)
    schema.tables["trees"].create(engine)  # an older database: no annotation tables
    engine.dispose()
    notes = Annotations(MetadataDB(url, readonly=True), "t")
    assert notes.overlapping() == []
    with pytest.raises(AnnotationNotFoundError):
        notes.get(1)
