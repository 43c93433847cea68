"""Access labels in focus: for a principal without a source's label, no token of that source and
no gist computed from one reaches the base — checked on every input the base receives, against
a control run without the restriction that does let them through."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from megacontext.runtime import SessionConfig, open_session
from megacontext.runtime.session import Session
from megacontext.store.policies import Policies

PUBLIC = "".join(f"harbour log {i}: the ferry left pier {i % 7} at dawn\n" for i in range(30))
SECRET = "".join(
    f"salary band Q{i}: quokka zeppelin xylophone {1000 + 37 * i} vermilion\n" for i in range(30)
)
LATER = "".join(f"orchard note {i}: pears ripen in row {i * 3}\n" for i in range(30))
CONFIG = SessionConfig(W_max=48, protected_recent=12, query_tokens=8, focus_steps=8)


@pytest.fixture(scope="module")
def tree(tiny_world, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("access") / "s"
    with open_session(path, tiny_world.base, tiny_world.bundle_dir, CONFIG) as mc:
        mc.ingest(PUBLIC, source="file:///harbour.txt", metadata={"path": "harbour.txt"})
        mc.ingest(SECRET, source="file:///salaries.txt", metadata={"path": "salaries.txt"})
        mc.ingest(LATER, source="file:///orchard.txt", metadata={"path": "orchard.txt"})
        assert mc.metadata is not None
        secret = [i for i in mc.metadata.ingests_of(mc.tree_id) if "salaries" in i.source.uri]
        Policies(mc.metadata, mc.tree_id).set_labels(secret[0].id, ["hr"], "admin")
    return path


def forbidden(mc: Session) -> tuple[torch.Tensor, tuple[int, int]]:
    """Every vector computed from the secret source: the gists of every node whose span
    overlaps it, and the embeddings of tokens found in it and nowhere else."""
    assert mc.metadata is not None
    (secret,) = [i for i in mc.metadata.ingests_of(mc.tree_id) if "salaries" in i.source.uri]
    a, b = secret.start, secret.stop
    assert b is not None
    rows = []
    tree = mc.tree
    for level in range(1, tree.num_levels + 1):
        width = tree.K**level
        first, last = a // width, min((b - 1) // width, tree.count(level) - 1)
        if first <= last:
            rows.append(torch.tensor(np.asarray(tree.gists(level, first, last + 1), np.float32)))
    inside = set(tree.tokens(a, b).tolist())
    outside = set(tree.tokens(0, a).tolist()) | set(tree.tokens(b, tree.num_tokens).tolist())
    question = set(mc.base.encode("What is the salary band of Q7?"))
    only_secret = sorted(inside - outside - question - set(mc.prompt.prefix))
    assert len(only_secret) >= 5  # words like quokka and zeppelin: tokens nothing else has
    rows.append(mc.base.embed(torch.as_tensor(only_secret)).float())
    return torch.cat(rows), (a, b)


def base_inputs(mc: Session, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Record every input vector the base receives from now on."""
    seen: list[torch.Tensor] = []
    forward = mc.base.forward

    def recording(vectors: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        seen.append(vectors.detach().float().reshape(-1, vectors.shape[-1]).clone())
        return forward(vectors, *args, **kwargs)

    monkeypatch.setattr(mc.base, "forward", recording)
    return seen


def leaked(seen: list[torch.Tensor], secret: torch.Tensor) -> int:
    """How many base inputs equal a forbidden vector."""
    count = 0
    for batch in seen:
        distance = torch.cdist(batch, secret)
        count += int((distance.min(dim=1).values < 1e-4).sum())
    return count


def focus_on_secret(span: tuple[int, int]):  # type: ignore[no-untyped-def]
    target = (span[0] + span[1]) // 2

    def oracle(wc):  # type: ignore[no-untyped-def]
        starts, ends = wc.spans()
        return np.where((starts <= target) & (target < ends), 1.0, -1.0)

    return oracle


@pytest.mark.parametrize("restricted", [True, False])
def test_no_restricted_token_or_gist_reaches_the_base(
    tree: Path,
    tiny_world,
    monkeypatch: pytest.MonkeyPatch,
    restricted: bool,  # type: ignore[no-untyped-def]
) -> None:
    with open_session(tree, tiny_world.base, tiny_world.bundle_dir, readonly=True) as mc:
        secret, span = forbidden(mc)
        if restricted:
            assert mc.restrict({"eng"}) == 1
        mc.score_override = focus_on_secret(span)  # focus pushed at the secret, as hard as it goes
        seen = base_inputs(mc, monkeypatch)
        answer = mc.ask("What is the salary band of Q7?", max_new_tokens=4)
        view = mc.working_context()
    assert seen, "the base was never called"
    if restricted:
        assert leaked(seen, secret) == 0
        assert all(c.source != "salaries.txt" for c in answer.citations)
        hidden = [e for e in view if span[0] < e.end and e.start < span[1]]
        assert hidden and all(e.preview == "[redacted]" for e in hidden)
        assert all(not (e.level == 0 and span[0] <= e.start < span[1]) for e in view)
    else:  # the control: the same focus without the restriction does show the secret
        assert leaked(seen, secret) > 0


def test_a_principal_holding_the_label_sees_it(tree: Path, tiny_world) -> None:  # type: ignore[no-untyped-def]
    with open_session(tree, tiny_world.base, tiny_world.bundle_dir, readonly=True) as mc:
        assert mc.restrict({"hr", "eng"}) == 0
        assert mc.access is not None and mc.access.empty
        assert mc.restrict(None) == 0 and mc.access is None


def test_ask_answers_as_a_principal_from_the_cli(tree: Path) -> None:
    """`ask --labels` reaches Session.restrict (what it guarantees is proven above)."""
    import json

    from typer.testing import CliRunner

    from megacontext.cli import app as cli

    args = ["ask", "What is the salary band of Q7?", "--tree", str(tree), "--json"]
    result = CliRunner().invoke(cli, [*args, "--labels", "eng"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert all(c["source"] != "salaries.txt" for c in answer["citations"])
