"""A service over a temporary root with the tiny test world, keys for two tenants."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from megacontext.runtime import SessionConfig
from megacontext.server import create_app

TEXT = "".join(f"line {i}: the lighthouse keeper logs ship {i * 7} at dusk\n" for i in range(1, 61))


@dataclass
class World:
    root: Path
    client: TestClient
    writer: str  # tenant acme, read + write
    reader: str  # tenant acme, read
    other: str  # tenant globex, read + write

    def headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


def config() -> SessionConfig:
    return SessionConfig(W_max=48, protected_recent=12, query_tokens=8, focus_steps=4, trace=False)


@pytest.fixture()
def world(tiny_world, tmp_path: Path) -> World:  # type: ignore[no-untyped-def]
    app = create_app(
        tmp_path / "service",
        base=tiny_world.base,
        focus=tiny_world.bundle,
        config=config(),
        max_body_bytes=64 * 1024,
    )
    keys = app.state.service.keys
    writer, _ = keys.create("acme", "read,write")
    reader, _ = keys.create("acme", "read")
    other, _ = keys.create("globex", "read,write")
    return World(tmp_path / "service", TestClient(app), writer, reader, other)


def tree_with_text(world: World, name: str = "notes") -> None:
    h = world.headers(world.writer)
    assert world.client.post("/v1/trees", json={"name": name}, headers=h).status_code == 201
    done = world.client.post(
        f"/v1/trees/{name}/sources",
        json={"text": TEXT, "source": "file:///logbook.txt", "metadata": {"path": "logbook.txt"}},
        headers=h,
    )
    assert done.status_code == 200, done.text
    assert done.json()["tokens"] > 0


@pytest.fixture()
def live(world: World) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(world.client.app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


HARBOUR = "".join(f"harbour log {i}: the ferry left pier {i % 7} at dawn\n" for i in range(60))
ORCHARD = "".join(f"orchard note {i}: pears ripen in row {i * 3}\n" for i in range(60))


@pytest.fixture(scope="session")
def traced_session(tiny_world, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """A session with two sources and a focus trace of four steps (as the CLI writes them)."""
    from megacontext.runtime import open_session

    path = tmp_path_factory.mktemp("traced") / "logs"
    traced = SessionConfig(
        W_max=48, protected_recent=12, refocus_every=4, query_tokens=8, focus_steps=6
    )
    with open_session(path, tiny_world.base, tiny_world.bundle_dir, traced) as mc:
        mc.ingest(HARBOUR, source="file:///harbour.txt", metadata={"path": "harbour.txt"})
        mc.ingest(ORCHARD, source="file:///orchard.txt", metadata={"path": "orchard.txt"})
        mc.focus_for(mc.base.encode(" pears ripen"), steps=0)
        for _ in range(4):
            mc.refocus()
    return path


@pytest.fixture()
def logs(world: World, traced_session: Path) -> str:
    """The traced session, as tenant acme's tree "logs" (a copy: tests may annotate it)."""
    shutil.copytree(traced_session, world.root / "tenants" / "acme" / "trees" / "logs")
    return "logs"
