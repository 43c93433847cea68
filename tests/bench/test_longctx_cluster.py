"""The long-context grid on a dask.distributed cluster (a LocalCluster of two worker processes
on 127.0.0.1): every cell's result equals the serial run's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from megacontext.bench.longctx import Cell, Grid, Setup, cells, run_cell, run_on_cluster
from megacontext.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[2]


def small_corpus(path: Path) -> Path:
    """A val split of two sources: the project's own docs as filler text."""
    path.mkdir()
    with (path / "val.jsonl").open("w", encoding="utf-8") as out:
        for i, page in enumerate(sorted((ROOT / "docs").glob("*.md"))[:6]):
            source = "gutenberg" if i % 2 else "shakespeare"
            doc = {"source": source, "name": page.name, "text": page.read_text(encoding="utf-8")}
            out.write(json.dumps(doc) + "\n")
    return path


def comparable(result: object) -> dict[str, object]:
    """A result without its wall time (the one field that depends on where it ran)."""
    fields = dataclasses.asdict(result)  # type: ignore[call-overload]
    fields.pop("seconds")
    return fields


@pytest.mark.slow
def test_cells_on_a_cluster_equal_the_serial_run(tmp_path: Path) -> None:
    from distributed import LocalCluster

    setup = Setup("default", None, str(small_corpus(tmp_path / "corpus")), ("recency", "rag-bm25"))
    todo = cells(Grid(("passkey", "needle"), (600,), (160,), 2), ["recency", "rag-bm25"])
    serial = [run_cell(setup, cell) for cell in todo]
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        distributed = run_on_cluster(cluster.scheduler_address, setup, todo, print)
    assert [comparable(r) for r in distributed] == [comparable(r) for r in serial]
    assert {r.system for r in serial} == {"recency", "rag-bm25"} and len(serial) == 4


def test_an_unreachable_scheduler_is_named() -> None:
    setup = Setup("default", None, "runs/corpus", None)
    with pytest.raises(InvalidInputError, match="cannot reach the dask scheduler"):
        run_on_cluster(
            "tcp://127.0.0.1:9", setup, [Cell("passkey", 600, 160, "recency", 1)], print, 2.0
        )
