"""The OpenAI-compatible endpoints, driven by the official `openai` package against a real
uvicorn server on loopback."""

from __future__ import annotations

import itertools
import time

import httpx
import openai
import pytest

from .conftest import World, tree_with_text


def test_chat_completions_through_the_openai_client(world: World, live: str) -> None:
    tree_with_text(world)
    client = openai.OpenAI(base_url=f"{live}/v1", api_key=world.reader, max_retries=0)
    assert [m.id for m in client.models.list()] == ["notes"]
    messages = [{"role": "user", "content": "Which ship at dusk?"}]
    whole = client.chat.completions.create(model="notes", messages=messages, max_tokens=8)
    text = whole.choices[0].message.content
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage is not None and 0 < whole.usage.completion_tokens <= 8
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    assert whole.choices[0].finish_reason in {"stop", "length"}

    chunks = list(
        client.chat.completions.create(
            model="notes",
            messages=messages,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # the same greedy answer, streamed
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])

    legacy = client.completions.create(model="notes", prompt="Which ship at dusk?", max_tokens=8)
    assert legacy.choices[0].text == text and legacy.usage is not None

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=messages)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{live}/v1", api_key="mck_bad", max_retries=0).models.list()


def test_a_client_that_disconnects_mid_stream_leaves_the_tree_intact(
    world: World, live: str
) -> None:
    tree_with_text(world)
    headers = world.headers(world.writer)
    before = httpx.get(f"{live}/v1/trees/notes", headers=headers).json()
    body = {"question": "Which ship?", "max_new_tokens": 32, "stream": True, "remember": True}
    with httpx.stream("POST", f"{live}/v1/trees/notes/ask", json=body, headers=headers) as r:
        next(r.iter_lines())  # read a little, then hang up
    deadline = time.monotonic() + 30
    while True:  # the remembered turn is completed (or never started), never half-written
        after = httpx.get(f"{live}/v1/trees/notes", headers=headers)
        if after.status_code == 200 and after.json()["sources"] == before["sources"] + 1:
            break
        assert time.monotonic() < deadline, after.text
        time.sleep(0.2)
    sources = httpx.get(f"{live}/v1/trees/notes/sources", headers=headers).json()["sources"]
    assert sources[-1]["kind"] == "conversation"
    tiled = sorted((s["start"], s["stop"]) for s in sources)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(tiled))  # no gap, no overlap
