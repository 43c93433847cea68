"""The web explorer's API (/v1/trees/{tree}/explorer/...) and page (/explorer/): a real tree with
two sources and a focus trace, served by the real app, read and annotated over HTTP."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from megacontext.cli import app as cli
from megacontext.cli.explore import tenant_name, tree_name

API = "/v1/trees/logs/explorer"


def test_drill_down_from_the_top_gist_to_raw_text(world, logs: str) -> None:  # type: ignore[no-untyped-def]
    logs = API
    get, h = world.client.get, world.headers(world.reader)
    view = get(f"{logs}/overview", headers=h).json()
    assert [s["source"] for s in view["sources"]["items"]] == ["harbour.txt", "orchard.txt"]
    top = view["top_level"]
    assert top >= 2
    node = get(f"{logs}/nodes", params={"level": top}, headers=h).json()["items"][0]
    for level in range(top, 0, -1):
        page = get(
            f"{logs}/children", params={"level": level, "index": node["index"]}, headers=h
        ).json()
        assert page["parent"]["index"] == node["index"] and page["level"] == level - 1
        node = page["items"][1]
    assert node["level"] == 0 and node["stop"] == node["start"] + 1
    block = get(f"{logs}/span", params={"level": top, "index": 0}, headers=h).json()
    assert block["text"].startswith("harbour log 0")
    first = block["provenance"][0]
    assert (first["source"], first["start"], first["lines"][0]) == ("harbour.txt", 0, 1)
    path = get(f"{logs}/path", params={"token": node["start"]}, headers=h).json()
    assert [n["level"] for n in path] == list(range(top, 0, -1))


def test_search_and_playback(world, logs: str) -> None:  # type: ignore[no-untyped-def]
    logs = API
    get, h = world.client.get, world.headers(world.reader)
    hits = get(f"{logs}/search", params={"q": "pears ripen"}, headers=h).json()["items"]
    assert (
        hits
        and "pears"
        in hits[0]["preview"]
        + get(f"{logs}/span", params={"level": 1, "index": hits[0]["index"]}, headers=h).json()[
            "text"
        ]
    )
    (trace,) = get("/v1/trees/logs/traces", headers=h).json()["traces"]
    steps = get(f"{logs}/traces/{trace['name']}", headers=h).json()["steps"]
    assert len(steps) == trace["steps"] == 4
    assert all(len(s["scores"]) == sum(run[2] for run in s["layout"]) for s in steps)
    assert any(s["after"] != s["layout"] for s in steps)
    page = get(f"{logs}/traces/{trace['name']}", params={"first": 2, "limit": 1}, headers=h).json()
    assert (page["total"], page["first"], page["steps"]) == (4, 2, steps[2:3])
    missing = get(f"{logs}/traces/session-nope.jsonl", headers=h)
    assert missing.status_code == 404 and "no trace named" in missing.json()["error"]["message"]


def test_annotations_over_http(world, logs: str) -> None:  # type: ignore[no-untyped-def]
    logs = API
    client, w = world.client, world.headers(world.writer)
    K = client.get(f"{logs}/overview", headers=w).json()["K"]
    made = client.post(
        f"{logs}/annotations",
        json={"level": 1, "start": K, "stop": 2 * K, "note": "ferry times", "tags": ["harbour"]},
        headers=w,
    )
    assert made.status_code == 201, made.text
    note = made.json()
    assert note["created_by"].startswith("acme/") and note["version"] == 1
    edited = client.patch(
        f"{logs}/annotations/{note['id']}",
        json={"version": 1, "note": "ferry times, checked", "tags": []},
        headers=w,
    )
    assert edited.status_code == 200 and edited.json()["version"] == 2
    stale = client.patch(
        f"{logs}/annotations/{note['id']}", json={"version": 1, "note": "lost?"}, headers=w
    )
    assert stale.status_code == 409
    assert stale.json()["error"]["type"] == "version_conflict"
    span = client.get(f"{logs}/span", params={"level": 1, "index": 1}, headers=w).json()
    assert [a["note"] for a in span["annotations"]] == ["ferry times, checked"]  # nothing lost
    # a read-only key sees notes, cannot write them
    r = world.headers(world.reader)
    assert len(client.get(f"{logs}/annotations", headers=r).json()) == 1
    denied = client.post(
        f"{logs}/annotations", json={"level": 0, "start": 0, "stop": 3, "note": "x"}, headers=r
    )
    assert denied.status_code == 403
    # bad spans are named; another tenant does not see the tree at all
    bad = client.post(
        f"{logs}/annotations", json={"level": 1, "start": 1, "stop": K + 1, "note": "x"}, headers=w
    )
    assert bad.status_code == 404 and "not a level-1 node" in bad.json()["error"]["message"]
    elsewhere = client.get(f"{logs}/overview", headers=world.headers(world.other))
    assert elsewhere.status_code == 404
    # deleting needs the latest version; the history keeps every change
    assert (
        client.delete(
            f"{logs}/annotations/{note['id']}", params={"version": 1}, headers=w
        ).status_code
        == 409
    )
    assert (
        client.delete(
            f"{logs}/annotations/{note['id']}", params={"version": 2}, headers=w
        ).status_code
        == 204
    )
    history = client.get(f"{logs}/annotations/{note['id']}/history", headers=r).json()
    assert [h["action"] for h in history] == ["create", "edit", "delete"]
    gone = client.patch(f"{logs}/annotations/999", json={"version": 1, "note": "x"}, headers=w)
    assert gone.status_code == 404


def test_bad_nodes_are_named(world, logs: str) -> None:  # type: ignore[no-untyped-def]
    logs = API
    get, h = world.client.get, world.headers(world.reader)
    deep = get(f"{logs}/nodes", params={"level": 9}, headers=h)
    assert deep.status_code == 404 and "level 9 does not exist" in deep.json()["error"]["message"]
    far = get(f"{logs}/span", params={"level": 1, "index": 10**6}, headers=h)
    assert far.status_code == 404 and "no node 1000000 at level 1" in far.text
    assert get(f"{logs}/search", params={"q": " "}, headers=h).status_code == 400
    assert get(f"{logs}/overview").status_code == 401


def test_the_page_and_its_assets_are_served_from_the_package(world) -> None:  # type: ignore[no-untyped-def]
    client = world.client
    page = client.get("/explorer/")
    assert page.status_code == 200 and 'src="/explorer/explorer.js"' in page.text
    script = client.get("/explorer/explorer.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith(
        "text/javascript"
    )
    assert "http://" not in script.text and "https://" not in script.text  # no CDN, no network
    assert client.get("/explorer/explorer.css").status_code == 200
    assert client.get("/explorer/../keys.sqlite").status_code == 404
    assert client.get("/explorer/secrets.txt").status_code == 404


def test_explore_refuses_a_path_that_is_not_a_session(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["explore", str(tmp_path), "--no-open"])
    assert result.exit_code == 2
    words = " ".join(result.output.replace("│", " ").split())
    assert "is not a session directory" in words and "megacontext ingest --tree DIR" in words


def test_explore_names() -> None:
    assert tree_name(Path("/data/My notes (2026)")) == "My-notes-2026-"
    assert tree_name(Path("/data/...")) == "tree"
    name = tenant_name()
    assert name and name == name.lower() and " " not in name


def test_megacontext_explore_serves_one_tree_and_keeps_its_notes(
    traced_session: Path, tmp_path: Path
) -> None:
    """The command as a user runs it: it prints a URL with a key, serves the page and the API
    over the tree, writes notes into the tree's own metadata, and leaves nothing behind."""
    import re
    import shutil
    import subprocess
    import sys
    import tempfile

    import httpx

    from megacontext.explorer.browse import browse

    tree = tmp_path / "my notes"
    shutil.copytree(traced_session, tree)
    before = set(Path(tempfile.gettempdir()).glob("megacontext-explore-*"))
    command = [sys.executable, "-m", "megacontext.cli", "explore", str(tree), "--no-open"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = next(line.strip() for line in process.stdout if "/explorer/#" in line)
        found = re.fullmatch(r"(http://127\.0\.0\.1:\d+)/explorer/#tree=([^&]+)&key=(\S+)", url)
        assert found, url
        origin, name, key = found.groups()
        assert name == "my-notes"
        with httpx.Client(base_url=origin, headers={"Authorization": f"Bearer {key}"}) as http:
            assert "MegaContext explorer" in http.get("/explorer/").text
            view = http.get(f"/v1/trees/{name}/explorer/overview").json()
            assert view["path"] == str(tree.resolve()) and view["tokens"] > 0
            made = http.post(
                f"/v1/trees/{name}/explorer/annotations",
                json={"level": 0, "start": 0, "stop": 5, "note": "the first words"},
            )
            assert made.status_code == 201, made.text
    finally:
        process.terminate()
        process.wait(timeout=30)
    with browse(tree) as b:
        assert [a["note"] for a in b.list_annotations()] == ["the first words"]
    assert set(Path(tempfile.gettempdir()).glob("megacontext-explore-*")) == before
