"""Do the gists in a focused working context help the base answer, or get in its way?

Runs the demo's MegaContext questions (the same document, session settings and prompt) and, for
each question, decodes the answer twice from the same focused working context: as sessions do
(every entry: raw tokens and gists), and with the gists dropped (only the raw tokens focus kept,
in order). Where the evidence is raw and only the first answer is wrong, the gists derail the
base. With ``--pin-evidence`` focus is taken out of the question: each fact's span is pinned raw
in the recency-assembled working context and the session asks without refocusing (a bundle
without a LensNet works too).

    .venv/bin/python scripts/demo-drop-gists.py --base smollm2 \\
        --focus runs/focus-smollm2/lens/bundle --json runs/demo-drop-gists.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from megacontext.core import entry_costs
from megacontext.eval.demo import build_document, is_correct
from megacontext.models import load_base
from megacontext.models.bundle import load_bundle
from megacontext.models.generation import decode
from megacontext.runtime import SessionConfig, open_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="smollm2", help="base model name or path")
    parser.add_argument("--focus", required=True, help="focus bundle directory")
    parser.add_argument("--tokens", type=int, default=120_000, help="document length")
    parser.add_argument("--facts", type=int, default=5)
    parser.add_argument("--w-max", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--prompt", default="raw", help="prompt style, as `megacontext demo`")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument(
        "--pin-evidence", action="store_true", help="pin each fact raw and ask without focus"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_base(args.base)
    bundle = load_bundle(Path(args.focus), fingerprints=base.fingerprints)
    document = build_document(base, args.tokens, args.facts, args.seed, args.w_max)
    config = SessionConfig(W_max=args.w_max, trace=False, prompt=args.prompt)
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="mc-drop-") as tmp,
        open_session(Path(tmp) / "s", base=base, focus=bundle, config=config) as session,
    ):
        started = time.perf_counter()
        for lo in range(0, len(document.ids), 4096):
            session.ingest(document.ids[lo : lo + 4096])
        print(f"ingested {len(document.ids):,} tokens in {time.perf_counter() - started:.0f} s")
        for fact in document.facts:
            session.focus.pinned.clear()
            session.reset_focus()
            if args.pin_evidence:
                session.focus.pin(fact.start, fact.end)
            answer = session.ask(
                fact.question,
                cue=fact.cue,
                max_new_tokens=args.new_tokens,
                focus_steps=0 if args.pin_evidence else None,
            )
            wc = session.wc
            starts, ends = wc.spans()
            evidence_raw = bool(np.all(wc.levels[(ends > fact.start) & (starts < fact.end)] == 0))
            keep = np.repeat(wc.levels == 0, entry_costs(wc.levels, wc.gists_per_node))
            device = base.device
            with torch.no_grad():
                prefix = base.embed(torch.as_tensor(session._prefix, device=device))
                ids = session.prompt.question_ids(base, fact.question, fact.cue)
                tail = base.embed(torch.as_tensor(ids, device=device))
                context = session.context_vectors().to(prefix.dtype)
                dropped = decode(
                    base,
                    torch.cat([prefix, context[torch.as_tensor(keep)], tail]),
                    args.new_tokens,
                    stop_ids=session.prompt.stop_ids,
                    stop_text=session.prompt.stop_text,
                )
            row = {
                "question": fact.question,
                "value": fact.value,
                "evidence_raw": evidence_raw,
                "entries": wc.size,
                "gists": int(np.count_nonzero(wc.levels)),
                "with_gists": answer.text.strip(),
                "with_gists_correct": is_correct(answer.text, fact),
                "gists_dropped": dropped.text.strip(),
                "gists_dropped_correct": is_correct(dropped.text, fact),
            }
            rows.append(row)
            print(json.dumps(row))
    for key in ("with_gists_correct", "gists_dropped_correct"):
        print(f"{key}: {sum(r[key] for r in rows)}/{len(rows)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
