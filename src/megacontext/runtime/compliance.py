"""The compliance report of a tree: what it stores (by source, label and age), its erasures, its
legal holds and retention, and the state of its audit chain and lineage — as JSON-ready data
(:func:`compliance_report`) and as Markdown (:func:`report_markdown`)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from megacontext.runtime.erasure import erasures
from megacontext.runtime.journal import label
from megacontext.store.metadata import COMPLETE
from megacontext.store.policies import Policies

if TYPE_CHECKING:
    from megacontext.runtime.session import Session

AGE_BUCKETS = (
    (1, "under a day"),
    (7, "under a week"),
    (30, "under 30 days"),
    (365, "under a year"),
)


def compliance_report(session: Session, now: dt.datetime | None = None) -> dict[str, Any]:
    """Everything the report says, computed now from the tree's stores and database."""
    now = now or dt.datetime.now(dt.UTC)
    db = session.metadata
    journal = db.ingests_of(session.tree_id, COMPLETE) if db is not None else []
    policies = Policies(db, session.tree_id).all() if db is not None else {}
    sources: list[dict[str, Any]] = []
    by_label: dict[str, int] = {}
    by_age: dict[str, int] = {}
    for ingest in journal:
        policy = policies.get(ingest.id)
        tokens = (ingest.stop or ingest.start) - ingest.start
        started = (
            ingest.started_at
            if ingest.started_at.tzinfo
            else ingest.started_at.replace(tzinfo=dt.UTC)
        )
        days = (now - started).total_seconds() / 86400
        labels = policy.labels if policy else []
        sources.append(
            {
                "id": ingest.id,
                "source": label(ingest),
                "kind": ingest.source.kind,
                "tokens": tokens,
                "ingested_at": started.isoformat(timespec="seconds"),
                "age_days": round(days, 2),
                "labels": labels,
                "retain_until": (
                    policy.retain_until.isoformat(timespec="seconds")
                    if policy and policy.retain_until
                    else None
                ),
                "hold": policy.hold if policy else None,
            }
        )
        for name in labels or ["(unlabelled)"]:
            by_label[name] = by_label.get(name, 0) + tokens
        bucket = next((what for limit, what in AGE_BUCKETS if days < limit), "a year or more")
        by_age[bucket] = by_age.get(bucket, 0) + tokens
    audit = session.audit()
    chain = audit.verify().to_json() if audit is not None else None
    lineage = session.lineage()
    checked, mismatches = lineage.verify(session.tree) if lineage is not None else (0, [])
    done = erasures(db, session.tree_id) if db is not None else []
    return {
        "tree": str(session.path) if session.path else None,
        "generated_at": now.isoformat(timespec="seconds"),
        "tokens": session.tree.num_tokens,
        "sources": sources,
        "tokens_by_label": by_label,
        "tokens_by_age": by_age,
        "holds": [s for s in sources if s["hold"]],
        "retention_due": Policies(db, session.tree_id).due(now) if db is not None else [],
        "erasures": [
            {
                "id": e.id,
                "at": e.at.isoformat(timespec="seconds") if e.at else None,
                "actor": e.actor,
                "sources": [s["source"] for s in e.sources],
                "tokens": e.tokens,
            }
            for e in done
        ],
        "audit_chain": chain,
        "lineage": {"checked": checked, "mismatches": len(mismatches)},
    }


def report_markdown(report: dict[str, Any]) -> str:
    """The report for people (Markdown)."""
    lines = [
        f"# Compliance report — {report['tree']}",
        "",
        f"Generated {report['generated_at']}. The history holds {report['tokens']:,} tokens "
        f"from {len(report['sources'])} sources.",
        "",
        "## Audit chain and lineage",
        "",
    ]
    chain = report["audit_chain"]
    if chain is None:
        lines.append("- No audit chain: this tree keeps no metadata database.")
    elif chain["ok"]:
        lines.append(
            f"- The audit chain holds: {chain['events']:,} events, head `{chain['head'][:16]}`."
        )
    else:
        lines.append(f"- **The audit chain is broken**: {chain['problem']}")
    lineage = report["lineage"]
    if lineage["mismatches"]:
        lines.append(f"- **Lineage**: {lineage['mismatches']} gists do not hash as recorded.")
    else:
        lines.append(f"- Lineage holds: {lineage['checked']:,} gists hash as recorded.")
    lines += ["", "## What is stored", ""]
    lines += ["| # | source | kind | tokens | ingested | labels | retain until | hold |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for s in report["sources"]:
        lines.append(
            f"| {s['id']} | {s['source']} | {s['kind']} | {s['tokens']:,} | {s['ingested_at']} | "
            f"{', '.join(s['labels']) or '—'} | {s['retain_until'] or '—'} | {s['hold'] or '—'} |"
        )
    lines += ["", "Tokens by label: " + _pairs(report["tokens_by_label"]) + "."]
    lines += ["", "Tokens by age: " + _pairs(report["tokens_by_age"]) + ".", ""]
    lines += ["## Legal holds", ""]
    holds = report["holds"]
    lines += [f"- #{s['id']} {s['source']}: {s['hold']}" for s in holds] or ["- None."]
    lines += ["", "## Retention", ""]
    due = report["retention_due"]
    lines.append(
        f"- Due for erasure now: {', '.join(f'#{i}' for i in due)} "
        "(`megacontext compliance apply-retention`)."
        if due
        else "- Nothing is due for erasure."
    )
    lines += ["", "## Erasures", ""]
    lines += [
        f"- #{e['id']} at {e['at']} by {e['actor']}: {', '.join(e['sources'])} "
        f"({e['tokens']:,} tokens)"
        for e in report["erasures"]
    ] or ["- None."]
    return "\n".join(lines) + "\n"


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {tokens:,}" for name, tokens in counts.items()) or "none"


__all__ = ["compliance_report", "report_markdown"]
