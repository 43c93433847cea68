"""Request and response bodies of the service (pydantic: the OpenAPI document is made of them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_NEW_TOKENS = 1024  # the most tokens one answer may decode
Index = Annotated[int, Field(ge=0, le=2**53)]  # a token position, level or node index


class ErrorBody(BaseModel):
    type: str = Field(description="The error's class, e.g. not_found, invalid_request.")
    message: str = Field(description="What was wrong and what to do.")
    code: int = Field(description="The HTTP status.")


class ErrorResponse(BaseModel):
    """Every error the service returns has this body."""

    error: ErrorBody


class TreeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="1-100 letters, digits, '.', '_' or '-'.", examples=["notes"])


class Tree(BaseModel):
    name: str
    tokens: int
    levels: int
    sources: int


class TreeList(BaseModel):
    trees: list[Tree]


class Ingest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="The text to append to the tree's history (UTF-8).")
    source: str | None = Field(
        None, description="A URI naming the source (default: an inline: URI of its hash)."
    )
    metadata: dict[str, Any] | None = Field(
        None, description='JSON metadata; "path" names the source in citations.'
    )
    force: bool = Field(False, description="Append even when the same content is already in.")


class Ingested(BaseModel):
    tokens: int = Field(description="Tokens appended (0 when the content was already in).")
    start: int
    stop: int
    duplicate_of: str | None = None


class Source(BaseModel):
    id: int = Field(description="The journal id (what DELETE takes).")
    source: str = Field(description="The source's path or URI.")
    kind: str
    start: int
    stop: int
    tokens: int


class SourceList(BaseModel):
    sources: list[Source]


class Removed(BaseModel):
    removed_tokens: int


class Ask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, examples=["What is the pass key?"])
    max_new_tokens: int = Field(64, ge=1, le=MAX_NEW_TOKENS)
    focus_steps: int | None = Field(None, ge=0, le=64)
    remember: bool = Field(False, description="Also append the question and answer.")
    stream: bool = Field(False, description="Answer as server-sent events.")
    where: str | None = Field(
        None,
        max_length=2000,
        description="A metadata predicate over the tree's sources (knowledge workflows: "
        "partition, kind, doc, owner, path, version — a number or 'latest' —, time, tag; "
        "AND / OR / NOT). Focus never expands the text of other sources and only admitted "
        "sources are cited. 'kind=code AND version=latest' keeps to the live version of each "
        "ingested code file. Not with remember.",
        examples=["kind=policy AND version=latest"],
    )
    prior: str | None = Field(
        None,
        max_length=2000,
        description="How focus weighs LensNet's score against lexical (BM25) and key matching, "
        "per partition: 'PARTITION: SIGNAL=WEIGHT, ...' clauses joined by ';', '*' for the "
        "rest; signals lexical, keys, lens (one left out weighs 0). Default: LensNet alone. "
        "Not with remember.",
        examples=["logs: lexical=1; policies: lens=1, keys=0.5"],
    )


class Citation(BaseModel):
    source: str | None
    lines: tuple[int, int] | None
    tokens: tuple[int, int]
    score: float
    text: str
    label: str
    latest: bool | None = Field(
        None,
        description="With where or prior: whether the cited source is the latest version of its "
        "document (false: a superseded version).",
    )


class Answer(BaseModel):
    answer: str
    citations: list[Citation]
    spans: list[tuple[int, int]]
    focus_steps: int
    usage: Usage
    seconds: dict[str, float]


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Positions the base read: prompt, context, question.")
    completion_tokens: int
    total_tokens: int


class FocusRequest(BaseModel):
    """Build a working context (nothing is kept: each request starts from the tree's default)."""

    model_config = ConfigDict(extra="forbid")
    question: str | None = Field(None, description="Focus for this question, as ask does.")
    W_max: int | None = Field(
        None, ge=1, le=2**31, description="The budget (default: the service's)."
    )
    focus_steps: int | None = Field(None, ge=0, le=64)
    pins: list[tuple[Index, Index]] = Field(
        default_factory=list,
        max_length=64,
        description="Token ranges [start, end) to bring back raw and keep.",
    )
    expand: list[tuple[Index, Index]] = Field(
        default_factory=list, max_length=64, description="Gists (level, index) to open."
    )
    collapse: list[tuple[Index, Index]] = Field(
        default_factory=list,
        max_length=64,
        description="Nodes (level, index) whose children to close.",
    )


class ContextEntry(BaseModel):
    level: int = Field(description="0: raw tokens (a run of them); 1+: one gist.")
    index: int = Field(description="The node's index on its level (a run's first token).")
    start: int = Field(description="First token of the history the entry covers.")
    end: int = Field(description="One past its last token.")
    entries: int = Field(description="Positions the entry takes in the working context.")
    text: str = Field(description="The raw text (empty for a gist).")


class WorkingContext(BaseModel):
    W_max: int
    size: int = Field(description="Positions used.")
    entries: list[ContextEntry] = Field(description="Oldest first; raw tokens merged into runs.")
    focus_steps: int


class ProvenanceSpan(BaseModel):
    source: str = Field(description="The source's path or URI.")
    kind: str
    start: int
    stop: int
    lines: tuple[int, int] | None
    bytes: tuple[int, int] | None


class ProvenanceList(BaseModel):
    spans: list[ProvenanceSpan]


class TraceFile(BaseModel):
    name: str
    steps: int
    bytes: int


class TraceList(BaseModel):
    traces: list[TraceFile]


class Trace(BaseModel):
    name: str
    steps: list[dict[str, Any]] = Field(description="One record per refocus step.")


class Generate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(None, description="Appended to the history before continuing.")
    max_new_tokens: int = Field(64, ge=0, le=MAX_NEW_TOKENS)
    stop: list[str] = Field(default_factory=list)


class Generated(BaseModel):
    text: str
    tokens: int


# ----------------------------------------------------------------------------- OpenAI


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's chat completion request; ``model`` names the tree. Unknown fields are ignored,
    as OpenAI-compatible servers do."""

    model: str = Field(description="The tree to answer from.")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    stream: bool = False
    stream_options: StreamOptions | None = None
    remember: bool = Field(False, description="MegaContext: append the question and answer.")


class CompletionRequest(BaseModel):
    """OpenAI's (legacy) completion request; ``model`` names the tree, ``prompt`` is asked."""

    model: str
    prompt: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    stream: bool = False
    stream_options: StreamOptions | None = None


Answer.model_rebuild()
