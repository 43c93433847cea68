"""Knowledge workflows: partitions and versions, metadata predicates, answers restricted by them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from megacontext.apps.knowledge import (
    add_document,
    ask_where,
    knowledge_sources,
    parse_predicate,
    select_sources,
)
from megacontext.apps.knowledge.predicates import SourceFacts
from megacontext.cli import app
from megacontext.errors import InvalidInputError
from megacontext.runtime import SessionConfig, open_session

CONFIG = SessionConfig(W_max=96, protected_recent=8, trace=False, focus_steps=6)
OLD_POLICY = "Refund policy. Refunds are accepted within 30 days of purchase.\n" * 2
NEW_POLICY = "Refund policy. Refunds are accepted within 14 days of purchase.\n" * 2
TICKET = "Ticket 7: the customer asks for a refund 20 days after purchase.\n"
LOG = "2026-06-02T10:00:01 payments: refund 7 rejected (window closed)\n" * 3


def facts(latest: int | None = None, **meta) -> SourceFacts:  # type: ignore[no-untyped-def]
    return SourceFacts(meta, latest)


# ----------------------------------------------------------------------------- predicates

KINDS = ["policy", "ticket", "log"]
_formula = st.recursive(
    st.tuples(
        st.just("term"),
        st.sampled_from(["kind", "owner"]),
        st.sampled_from(["=", "!="]),
        st.sampled_from(KINDS),
    ),
    lambda inner: st.one_of(
        st.tuples(st.just("not"), inner),
        st.tuples(st.sampled_from(["and", "or"]), inner, inner),
    ),
    max_leaves=6,
)


def _text(f) -> str:  # type: ignore[no-untyped-def]
    if f[0] == "term":
        return f"{f[1]}{f[2]}{f[3]}"
    if f[0] == "not":
        return f"NOT ({_text(f[1])})"
    return f"({_text(f[1])}) {f[0].upper()} ({_text(f[2])})"


def _truth(f, meta) -> bool:  # type: ignore[no-untyped-def]
    if f[0] == "term":
        return (meta.get(f[1]) == f[3]) == (f[2] == "=")
    if f[0] == "not":
        return not _truth(f[1], meta)
    a, b = _truth(f[1], meta), _truth(f[2], meta)
    return a and b if f[0] == "and" else a or b


@settings(max_examples=200, deadline=None)
@given(formula=_formula, kind=st.sampled_from(KINDS), owner=st.sampled_from(KINDS))
def test_a_parsed_predicate_means_what_its_formula_means(formula, kind, owner) -> None:  # type: ignore[no-untyped-def]
    meta = {"kind": kind, "owner": owner}
    assert parse_predicate(_text(formula))(facts(**meta)) == _truth(formula, meta)


def test_and_binds_tighter_than_or() -> None:
    p = parse_predicate("kind=log OR kind=policy AND owner=ana")
    assert p(facts(kind="log", owner="bo"))  # log OR (policy AND ana)
    assert not p(facts(kind="policy", owner="bo"))
    assert parse_predicate("(kind=log OR kind=policy) and owner=ana")(
        facts(kind="policy", owner="ana")
    )


def test_versions_times_and_tags() -> None:
    latest = parse_predicate("version=latest")
    assert latest(facts(2, version=2)) and not latest(facts(2, version=1))
    assert not latest(facts(None, path="notes.txt"))  # not a document: no version
    assert parse_predicate("version<2")(facts(2, version=1))
    since = parse_predicate("time>=2026-06-01 AND time<'2026-07-01T00:00'")
    assert since(facts(time="2026-06-02T10:00:00")) and not since(facts(time="2026-05-31"))
    assert not since(facts(kind="log"))  # no time: outside every range
    assert parse_predicate("tag=refunds")(facts(tags=["eu", "refunds"]))
    assert parse_predicate("tag!=refunds")(facts(tags=["eu"]))
    assert parse_predicate('owner="Ana Lima"')(facts(owner="Ana Lima"))


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("colour=red", "unknown field 'colour' in the predicate; fields: partition, kind"),
        ("kind<policy", "kind is text: compare it with = or !="),
        ("version=two", "version must be an integer or 'latest'"),
        ("version>latest", "version=latest takes = or !="),
        ("time>=yesterday", "is not an ISO 8601 date"),
        ("kind=policy AND", "ends where a term is expected"),
        ("(kind=policy", "unclosed '('"),
        ("kind policy", "no operator after 'kind'"),
        ("kind=policy owner=ana", "after a complete term"),
        ("kind=", "no value after kind="),
        ("   ", "the predicate is empty"),
    ],
)
def test_bad_predicates_say_what_is_wrong(text: str, said: str) -> None:
    with pytest.raises(InvalidInputError, match=None) as caught:
        parse_predicate(text)
    assert said in str(caught.value)


# ----------------------------------------------------------------------------- documents


@pytest.fixture
def kb(tiny_world, tmp_path: Path):  # type: ignore[no-untyped-def]
    with open_session(tmp_path / "kb", tiny_world.base, tiny_world.bundle, CONFIG) as mc:
        add_document(
            mc, OLD_POLICY, partition="policies", doc="refunds", kind="policy", time="2026-01-10"
        )
        add_document(
            mc,
            TICKET,
            partition="tickets",
            doc="ticket-7",
            kind="ticket",
            time="2026-06-01",
            tags=["refunds"],
        )
        add_document(
            mc, NEW_POLICY, partition="policies", doc="refunds", kind="policy", time="2026-06-01"
        )
        add_document(
            mc, LOG, partition="logs", doc="payments.log", kind="log", time="2026-06-02T10:00:01"
        )
        yield mc


def test_documents_get_versions_and_stay_append_only(kb) -> None:  # type: ignore[no-untyped-def]
    chosen, rest = select_sources(kb, "partition=policies")
    assert [(s.label(), s.superseded) for s in chosen] == [
        ("policies/refunds@v1", True),
        ("policies/refunds@v2", False),
    ]
    assert len(rest) == 2
    tokens = kb.tree.num_tokens
    again, done = add_document(kb, NEW_POLICY, partition="policies", doc="refunds")
    assert again is None and done.tokens == 0 and kb.tree.num_tokens == tokens  # unchanged
    with pytest.raises(InvalidInputError, match="at version 2; a new version must be above it"):
        add_document(kb, "Refunds: never.", partition="policies", doc="refunds", version=2)
    with pytest.raises(InvalidInputError, match="--partition 'no such' is not a name"):
        add_document(kb, "x", partition="no such", doc="d")
    with pytest.raises(InvalidInputError, match="--time 'soon' is not an ISO 8601"):
        add_document(kb, "x", partition="p", doc="d", time="soon")
    third, _ = add_document(kb, OLD_POLICY, partition="policies", doc="refunds")  # reverted
    assert third is not None and third.label() == "policies/refunds@v3"
    assert kb.tree.num_tokens > tokens  # the old bytes again, as the new version
    latest, _ = select_sources(kb, "doc=refunds AND version=latest")
    assert [s.label() for s in latest] == ["policies/refunds@v3"]


def test_a_predicate_keeps_focus_and_citations_on_what_it_admits(kb) -> None:  # type: ignore[no-untyped-def]
    (old,) = [s for s in select_sources(kb, "doc=refunds AND version=1")[0]]

    def want_the_old_policy(wc):  # type: ignore[no-untyped-def]
        starts, ends = wc.spans()
        return np.where((starts < old.stop) & (ends > old.start), 1.0, -1.0)

    kb.score_override = want_the_old_policy
    plain = ask_where(kb, "How long is the refund window?", max_new_tokens=3)
    assert plain.stale_citations > 0  # unrestricted, focus opens (and cites) the old version
    K = kb.tree.K
    whole = (-(-old.start // K) * K, old.stop // K * K)  # the old version's whole blocks
    answer = ask_where(
        kb, "How long is the refund window?", "kind=policy AND version=latest", max_new_tokens=3
    )
    assert answer.where == "kind=policy AND version=latest" and answer.admitted_sources == 1
    assert answer.stale_citations == 0
    assert all(c.source == "policies/refunds@v2" for c in answer.citations)
    starts, ends = kb.wc.spans()
    opened = (kb.wc.levels == 0) & (starts >= whole[0]) & (ends <= whole[1])
    assert not opened.any()  # focus never expanded the old version's blocks
    assert not kb.focus.avoided  # the restriction was for this question only
    with pytest.raises(InvalidInputError, match="no source matches --where 'kind=memo'"):
        ask_where(kb, "Why?", "kind=memo")
    with pytest.raises(InvalidInputError, match="unknown field 'colour'"):
        ask_where(kb, "Why?", "colour=red")


def test_a_prior_per_partition_steers_focus_to_that_partition(
    tiny_world, wide_bundle, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # Without LensNet (focus by recency), a prior's lexical weight alone decides what opens.
    config = replace(CONFIG, W_max=160, protected_recent=16, use_lens=False)
    with open_session(tmp_path / "kb", tiny_world.base, wide_bundle, config) as mc:
        for text, partition, doc in [
            (OLD_POLICY * 4, "policies", "refunds"),
            (TICKET, "tickets", "ticket-7"),
            (NEW_POLICY * 4, "policies", "refunds"),
            (LOG, "logs", "payments.log"),
        ]:
            add_document(mc, text, partition=partition, doc=doc)
        sources = knowledge_sources(mc)
        (ticket,) = [s for s in sources if s.meta["partition"] == "tickets"]
        policies = [s for s in sources if s.meta["partition"] == "policies"]
        question = "Which customer asks 20 days after purchase?"

        def opened(spans: list[tuple[int, int]], among) -> bool:  # type: ignore[no-untyped-def]
            return all(any(s.start <= a < s.stop for s in among) for a, _ in spans)

        mc.reset_focus()
        plain = ask_where(mc, question, max_new_tokens=2)
        assert plain.spans == [] and plain.prior is None  # recency: nothing opens
        mc.reset_focus()
        steered = ask_where(mc, question, prior="tickets: lexical=1", max_new_tokens=2)
        assert steered.spans and opened(steered.spans, [ticket])
        assert steered.citations[0].source == "tickets/ticket-7@v1"
        assert steered.prior == "tickets: lexical=1"
        assert mc.focus.prior is None  # the prior was for this question only
        mc.reset_focus()
        elsewhere = ask_where(mc, question, prior="policies: lexical=1", max_new_tokens=2)
        assert elsewhere.spans and opened(elsewhere.spans, policies)
        with pytest.raises(InvalidInputError, match="partition 'tikets', which holds no source"):
            ask_where(mc, question, prior="tikets: lexical=1")
        with pytest.raises(InvalidInputError, match="gives partition 'logs' twice"):
            ask_where(mc, question, prior="logs: lexical=1; logs: keys=1")
        with pytest.raises(InvalidInputError, match="names no partition before ':'"):
            ask_where(mc, question, prior=": lexical=1")
        assert mc.focus.prior is None and not mc.focus.avoided


def test_the_knowledge_commands(tiny_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    old, new, log = tmp_path / "refunds.md", tmp_path / "refunds-v2.md", tmp_path / "pay.log"
    old.write_text(OLD_POLICY)
    new.write_text(NEW_POLICY)
    log.write_text(LOG)
    tree = ["--tree", str(tmp_path / "kb")]
    models = [
        "--base",
        str(tiny_world.base_dir),
        "--focus",
        str(tiny_world.bundle_dir),
        "--w-max",
        "64",
    ]
    add = ["knowledge", "add", *tree, *models]
    result = runner.invoke(
        app, [*add, str(old), "--partition", "policies", "--kind", "policy", "--time", "2026-01-10"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        [
            *add,
            str(new),
            "--partition",
            "policies",
            "--doc",
            "refunds.md",
            "--kind",
            "policy",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["documents"][0]["added"] == "policies/refunds.md@v2"
    result = runner.invoke(
        app, [*add, str(log), "--partition", "logs", "--kind", "log", "--tag", "payments"]
    )
    assert result.exit_code == 0, result.output
    listed = runner.invoke(
        app, ["knowledge", "sources", *tree, "--where", "partition=policies", "--json"]
    )
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)["sources"]
    assert [(r["label"], r["latest"]) for r in rows] == [
        ("policies/refunds.md@v1", False),
        ("policies/refunds.md@v2", True),
    ]
    asked = runner.invoke(
        app,
        [
            "knowledge",
            "ask",
            "Refund window?",
            *tree,
            "--where",
            "version=latest",
            "--max-new-tokens",
            "2",
            "--json",
        ],
    )
    assert asked.exit_code == 0, asked.output
    report = json.loads(asked.stdout)
    assert report["stale_citations"] == 0 and report["admitted_sources"] == 2
    weighed = runner.invoke(
        app,
        [
            *["knowledge", "ask", "Refund window?", *tree],
            *["--prior", "logs: lexical=1; *: lens=1", "--max-new-tokens", "2", "--json"],
        ],
    )
    assert weighed.exit_code == 0, weighed.output
    assert json.loads(weighed.stdout)["prior"] == "logs: lexical=1; *: lens=1"
    shown = runner.invoke(
        app,
        [
            "knowledge",
            "ask",
            "Refund window?",
            *tree,
            "--prior",
            "logs: lexical=1",
            "--max-new-tokens",
            "2",
        ],
    )
    assert shown.exit_code == 0 and "focus prior: logs: lexical=1" in shown.output
    for prior, said in [
        ("logs: colour=1", "SIGNAL one of lexical, keys, lens"),
        ("tickets: lexical=1", "partition 'tickets', which holds no source; partitions: logs"),
    ]:
        bad = runner.invoke(app, ["knowledge", "ask", "Why?", *tree, "--prior", prior])
        assert isinstance(bad.exception, InvalidInputError) and said in str(bad.exception)
    bad = runner.invoke(app, ["knowledge", "ask", "Why?", *tree, "--where", "colour=red"])
    assert isinstance(bad.exception, InvalidInputError) and "unknown field 'colour'" in str(
        bad.exception
    )
    twice = runner.invoke(app, [*add, str(old), str(new), "--partition", "p", "--doc", "d"])
    assert isinstance(twice.exception, InvalidInputError) and "--doc names one document" in str(
        twice.exception
    )
    missing = runner.invoke(app, [*add, str(tmp_path / "nope.md"), "--partition", "p"])
    assert isinstance(missing.exception, InvalidInputError) and "is not a file" in str(
        missing.exception
    )


def test_code_files_are_versioned_documents(tiny_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from megacontext.apps.code import code_sources, ingest_repo, scan_repo

    repo = tmp_path / "shop"
    repo.mkdir()
    (repo / "a.py").write_text("RATE = 3\n")
    (repo / "b.py").write_text("NAME = 'b'\n")
    with open_session(tmp_path / "mc", tiny_world.base, tiny_world.bundle, CONFIG) as mc:
        ingest_repo(mc, scan_repo(repo))
        (repo / "a.py").write_text("RATE = 7\n")
        ingest_repo(mc, scan_repo(repo))
        live, stale = select_sources(mc, "kind=code AND version=latest")
        assert sorted(s.label() for s in live) == ["shop/a.py@v2", "shop/b.py@v1"]
        assert [s.label() for s in stale] == ["shop/a.py@v1"] and stale[0].superseded
        # The same verdict as the coding assistant's own bookkeeping.
        assert {s.id for s in live} == {c.id for c in code_sources(mc) if c.live}
