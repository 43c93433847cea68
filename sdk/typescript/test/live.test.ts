/** The client against a live `megacontext serve` (started by test/global-setup.ts). */

import { describe, expect, inject, it } from "vitest";
import {
  type Annotation,
  type Answer,
  type AskStreamEvent,
  AuthenticationError,
  ConflictError,
  InvalidRequestError,
  MegaContextClient,
  MegaContextError,
  NotFoundError,
  PermissionDeniedError,
  SCHEMA_FIELDS,
  type WorkingContext,
  parseEventStream,
} from "../src/index.js";

const live = inject("live");
const client = new MegaContextClient({ baseUrl: live.baseUrl, apiKey: live.keys.readWrite });
const readOnly = new MegaContextClient({ baseUrl: live.baseUrl, apiKey: live.keys.readOnly });
const otherTenant = new MegaContextClient({ baseUrl: live.baseUrl, apiKey: live.keys.other });

const TREE = "sdk-notes";
// Longer than the working context (--w-max 256), so that answers cite what focus expanded.
const TEXT = Array.from(
  { length: 60 },
  (_, i) =>
    `Line ${i}: the weather in town number ${i} was mild and the market sold ${i * 3} apples.`,
);
TEXT.splice(37, 0, "The secret pass key is 71432.");
const QUESTION = { question: "What is the secret pass key?", maxNewTokens: 8 };

function sortedKeys(value: object): string[] {
  return Object.keys(value).sort();
}

function fields(name: keyof typeof SCHEMA_FIELDS): string[] {
  return [...SCHEMA_FIELDS[name]].sort();
}

async function rejection(promise: Promise<unknown>): Promise<MegaContextError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(MegaContextError);
    return error as MegaContextError;
  }
  throw new Error("expected the call to fail");
}

async function collect(events: AsyncIterable<AskStreamEvent>): Promise<AskStreamEvent[]> {
  const seen: AskStreamEvent[] = [];
  for await (const event of events) seen.push(event);
  return seen;
}

describe("live service", () => {
  let ingestedTokens = 0;
  let asked: Answer;

  it("reports its health without a key", async () => {
    const health = await new MegaContextClient({ baseUrl: `${live.baseUrl}/v1/` }).health();
    expect(health.status).toBe("ok");
    expect(typeof health.version).toBe("string");
  });

  it("creates, gets and lists a tree", async () => {
    const tree = await client.createTree(TREE);
    expect(tree).toEqual({ name: TREE, tokens: 0, levels: 0, sources: 0 });
    expect(sortedKeys(tree)).toEqual(fields("Tree"));
    expect(await client.getTree(TREE)).toEqual(tree);
    const list = await client.listTrees();
    expect(list.trees.map((t) => t.name)).toContain(TREE);
    const models = await client.models();
    expect(models.object).toBe("list");
    expect(models.data.map((m) => m.id)).toContain(TREE);
  });

  it("answers a second create with ConflictError, without retrying it", async () => {
    let calls = 0;
    const counting = new MegaContextClient({
      baseUrl: live.baseUrl,
      apiKey: live.keys.readWrite,
      fetch: (input, init) => {
        calls++;
        return fetch(input, init);
      },
    });
    const error = await rejection(counting.createTree(TREE));
    expect(error).toBeInstanceOf(ConflictError);
    expect(error.status).toBe(409);
    expect(error.type).toBe("already_exists");
    expect(error.retryAfter).toBeUndefined();
    expect(calls).toBe(1);
  });

  it("ingests text and lists its source", async () => {
    const done = await client.ingest(TREE, {
      text: TEXT.join("\n"),
      metadata: { path: "notes.txt" },
    });
    expect(sortedKeys(done)).toEqual(fields("Ingested"));
    expect(done.tokens).toBeGreaterThan(256);
    expect(done.stop - done.start).toBe(done.tokens);
    expect(done.duplicate_of).toBeNull();
    ingestedTokens = done.tokens;

    const again = await client.ingest(TREE, {
      text: TEXT.join("\n"),
      metadata: { path: "notes.txt" },
    });
    expect(again.tokens).toBe(0);
    expect(again.duplicate_of).toBe("notes.txt");

    const { sources } = await client.listSources(TREE);
    expect(sources).toHaveLength(1);
    expect(sortedKeys(sources[0]!)).toEqual(fields("Source"));
    expect(sources[0]).toMatchObject({ source: "notes.txt", kind: "text", tokens: done.tokens });
    expect((await client.getTree(TREE)).tokens).toBe(done.tokens);
  });

  it("builds a working context: budget, pins, entries covering the history", async () => {
    const tokens = (await client.getTree(TREE)).tokens;
    const covers = (context: WorkingContext, wMax: number) => {
      expect(sortedKeys(context)).toEqual(fields("WorkingContext"));
      expect(context.W_max).toBe(wMax);
      expect(context.size).toBeLessThanOrEqual(wMax);
      const { entries } = context;
      expect(entries.length).toBeGreaterThan(0);
      for (const entry of entries) expect(sortedKeys(entry)).toEqual(fields("ContextEntry"));
      // Oldest first and contiguous: together they cover the whole history, [0, tokens).
      expect(entries[0]!.start).toBe(0);
      for (let i = 1; i < entries.length; i++) {
        expect(entries[i]!.start).toBe(entries[i - 1]!.end);
      }
      expect(entries.at(-1)!.end).toBe(tokens);
      expect(entries.reduce((sum, e) => sum + e.entries, 0)).toBe(context.size);
      return entries;
    };
    covers(await client.context(TREE, { question: QUESTION.question, wMax: 128 }), 128);

    // The pinned tokens come back raw. (Their 32-token block raw, the 32 gists of the level-2
    // node above it and the raw tail need 140 positions in this tree: more than 128.)
    const pinned = await client.context(TREE, {
      question: QUESTION.question,
      wMax: 192,
      pins: [[4, 8]],
    });
    const holding = covers(pinned, 192).find((e) => e.start <= 4 && 8 <= e.end);
    expect(holding?.level).toBe(0);
    const tooSmall = await rejection(client.context(TREE, { wMax: 128, pins: [[4, 8]] }));
    expect(tooSmall).toBeInstanceOf(InvalidRequestError);
    expect(tooSmall.status).toBe(400);
    expect(tooSmall.message).toContain("W_max");

    // Nothing is kept, and the read scope suffices: the service's default budget again.
    const plain = await readOnly.context(TREE);
    covers(plain, 256);
    expect(plain.focus_steps).toBe(0);
  });

  it("reports provenance: where tokens come from", async () => {
    const { spans } = await client.provenance(TREE, 0, 8);
    expect(spans.length).toBeGreaterThan(0);
    for (const span of spans) expect(sortedKeys(span)).toEqual(fields("ProvenanceSpan"));
    expect(spans[0]).toMatchObject({ source: "notes.txt", kind: "text", start: 0 });
    expect(spans[0]!.stop).toBeGreaterThan(0);
    const backwards = await rejection(client.provenance(TREE, 8, 4));
    expect(backwards).toBeInstanceOf(InvalidRequestError);
    expect(backwards.status).toBe(400);
    expect(await rejection(client.provenance(TREE, 4, 4))).toBeInstanceOf(InvalidRequestError);
    // Not integers: refused before any request.
    const fraction = await rejection(client.provenance(TREE, 0.5, 8));
    expect(fraction).toBeInstanceOf(InvalidRequestError);
    expect(fraction.status).toBeUndefined();
    const badPin = await rejection(client.context(TREE, { pins: [[4, Number.NaN]] }));
    expect(badPin).toBeInstanceOf(InvalidRequestError);
    expect(badPin.status).toBeUndefined();
  });

  it("annotates: create, list, edit, a stale ConflictError, delete, history", async () => {
    const note = await client.annotate(TREE, {
      level: 0,
      start: 0,
      stop: 5,
      note: "where the notes begin",
      tags: ["intro", "sdk:ts"],
    });
    expect(sortedKeys(note)).toEqual(fields("Annotation"));
    expect(note).toMatchObject({
      level: 0,
      start: 0,
      stop: 5,
      note: "where the notes begin",
      tags: ["intro", "sdk:ts"],
      version: 1,
    });
    expect(note.created_by).toMatch(/^t\//);
    expect(note.updated_by).toBe(note.created_by);

    const listed = await client.listAnnotations(TREE);
    expect(listed).toEqual([note]);
    for (const found of listed) expect(sortedKeys(found)).toEqual(fields("Annotation"));
    expect(await client.listAnnotations(TREE, { start: 4, stop: 9 })).toEqual([note]);
    expect(await client.listAnnotations(TREE, { start: 5 })).toEqual([]);

    const edited = await client.editAnnotation(TREE, note, {
      note: "where the notes begin: line 0",
      tags: ["intro"],
    });
    expect(edited).toMatchObject({
      id: note.id,
      note: "where the notes begin: line 0",
      tags: ["intro"],
      version: 2,
      created_at: note.created_at,
    });
    expect(await client.listAnnotations(TREE)).toEqual([edited]);

    // `note` is version 1, replaced meanwhile: refused, and asking again would not help.
    let calls = 0;
    const counting = new MegaContextClient({
      baseUrl: live.baseUrl,
      apiKey: live.keys.readWrite,
      fetch: (input, init) => {
        calls++;
        return fetch(input, init);
      },
    });
    const stale = await rejection(counting.editAnnotation(TREE, note, { note: "lost edit" }));
    expect(stale).toBeInstanceOf(ConflictError);
    expect(stale.status).toBe(409);
    expect(stale.type).toBe("version_conflict");
    expect(calls).toBe(1);
    const staleDelete = await rejection(counting.deleteAnnotation(TREE, note));
    expect(staleDelete).toBeInstanceOf(ConflictError);
    expect(staleDelete.type).toBe("version_conflict");
    expect(calls).toBe(2);
    expect(await client.listAnnotations(TREE)).toEqual([edited]);

    await expect(client.deleteAnnotation(TREE, edited)).resolves.toBeUndefined();
    expect(await client.listAnnotations(TREE)).toEqual([]);
    expect(await rejection(client.deleteAnnotation(TREE, edited))).toBeInstanceOf(NotFoundError);

    const history = await client.annotationHistory(TREE, note.id);
    for (const change of history) {
      expect(sortedKeys(change)).toEqual(["action", "actor", "at", "note", "tags", "version"]);
      expect(change.actor).toMatch(/^t\//);
      expect(Number.isNaN(Date.parse(change.at))).toBe(false);
    }
    expect(history.map((c) => [c.action, c.version, c.note, c.tags])).toEqual([
      ["create", 1, "where the notes begin", ["intro", "sdk:ts"]],
      ["edit", 2, "where the notes begin: line 0", ["intro"]],
      ["delete", 3, "where the notes begin: line 0", ["intro"]],
    ]);
    const missing = await rejection(client.annotationHistory(TREE, note.id + 1000));
    expect(missing).toBeInstanceOf(NotFoundError);
  });

  it("lets a read-only key list notes, not annotate; another tenant sees none", async () => {
    const note = await client.annotate(TREE, { level: 0, start: 8, stop: 12, note: "shared" });
    expect(note.tags).toEqual([]);
    try {
      expect(await readOnly.listAnnotations(TREE)).toEqual([note]);
      expect((await readOnly.annotationHistory(TREE, note.id)).map((c) => c.action)).toEqual([
        "create",
      ]);
      const denied = await rejection(
        readOnly.annotate(TREE, { level: 0, start: 0, stop: 5, note: "not allowed" }),
      );
      expect(denied).toBeInstanceOf(PermissionDeniedError);
      expect(denied.status).toBe(403);
      const deniedEdit = await rejection(readOnly.editAnnotation(TREE, note, { note: "no" }));
      expect(deniedEdit).toBeInstanceOf(PermissionDeniedError);

      for (const call of [
        () => otherTenant.listAnnotations(TREE),
        () => otherTenant.annotate(TREE, { level: 0, start: 0, stop: 5, note: "elsewhere" }),
        () => otherTenant.editAnnotation(TREE, note, { note: "elsewhere" }),
        () => otherTenant.deleteAnnotation(TREE, note),
        () => otherTenant.annotationHistory(TREE, note.id),
      ]) {
        const hidden = await rejection(call());
        expect(hidden).toBeInstanceOf(NotFoundError);
        expect(hidden.status).toBe(404);
      }
      expect(await client.listAnnotations(TREE)).toEqual([note]);
    } finally {
      await client.deleteAnnotation(TREE, note);
    }
  });

  it("refuses a span that is not a node of its level (NotFoundError)", async () => {
    const response = await fetch(`${live.baseUrl}/v1/trees/${TREE}/explorer/overview`, {
      headers: { authorization: `Bearer ${live.keys.readWrite}` },
    });
    expect(response.status).toBe(200);
    const { K, tokens } = (await response.json()) as { K: number; tokens: number };
    expect(K).toBeGreaterThan(1);
    expect(tokens).toBeGreaterThanOrEqual(2 * K);
    const shifted = await rejection(
      client.annotate(TREE, { level: 1, start: 1, stop: 1 + K, note: "off the grid" }),
    );
    expect(shifted).toBeInstanceOf(NotFoundError);
    expect(shifted.status).toBe(404);
    expect(shifted.message).toContain("not a level-1 node");
    // The node itself is annotatable (and a level-1 note names exactly its span).
    const node = await client.annotate(TREE, { level: 1, start: K, stop: 2 * K, note: "block 1" });
    expect([node.level, node.start, node.stop]).toEqual([1, K, 2 * K]);
    await client.deleteAnnotation(TREE, node);
    const past = await rejection(
      client.annotate(TREE, { level: 0, start: tokens, stop: tokens + 1, note: "after" }),
    );
    expect(past).toBeInstanceOf(NotFoundError);
    expect(await client.listAnnotations(TREE)).toEqual([]);
  });

  it("asks: a typed Answer with citations and usage", async () => {
    asked = await client.ask(TREE, QUESTION);
    expect(typeof asked.answer).toBe("string");
    expect(asked.answer.length).toBeGreaterThan(0);
    // What the service sends is what the SDK declares (drift.test.ts checks the document).
    expect(sortedKeys(asked)).toEqual(fields("Answer"));
    expect(sortedKeys(asked.usage)).toEqual(fields("Usage"));
    expect(asked.usage.total_tokens).toBe(
      asked.usage.prompt_tokens + asked.usage.completion_tokens,
    );
    expect(asked.usage.completion_tokens).toBeGreaterThan(0);
    expect(asked.citations.length).toBeGreaterThan(0);
    for (const citation of asked.citations) {
      expect(sortedKeys(citation)).toEqual(fields("Citation"));
      expect(citation.tokens).toHaveLength(2);
    }
  });

  it("streams the same answer: pieces, then the whole Answer", async () => {
    const events = await collect(client.askStream(TREE, QUESTION));
    const last = events.at(-1);
    expect(last?.type).toBe("answer");
    const pieces = events.slice(0, -1);
    expect(pieces.length).toBeGreaterThan(0);
    expect(pieces.every((e) => e.type === "text")).toBe(true);
    const text = pieces.map((e) => (e.type === "text" ? e.text : "")).join("");
    const answer = last?.type === "answer" ? last.answer : undefined;
    expect(text).toBe(answer?.answer);
    expect(text).toBe(asked.answer);
    expect(answer?.usage).toEqual(asked.usage);
    expect(answer?.spans).toEqual(asked.spans);
  });

  it("stops a stream the caller breaks out of", async () => {
    for await (const event of client.askStream(TREE, QUESTION)) {
      expect(event.type).toBe("text");
      break;
    }
    expect((await client.ask(TREE, QUESTION)).answer).toBe(asked.answer);
  });

  it("asks with a predicate and a focus prior; bad ones are InvalidRequestError", async () => {
    const kept = await client.ask(TREE, { ...QUESTION, where: "path=notes.txt" });
    expect(kept.citations.every((c) => c.latest === true)).toBe(true);
    const weighed = await client.ask(TREE, { ...QUESTION, prior: "lexical=1, lens=1" });
    expect(weighed.answer.length).toBeGreaterThan(0);
    expect(weighed.citations.every((c) => c.latest === true)).toBe(true);
    const badWhere = await rejection(client.ask(TREE, { question: "?", where: "colour=red" }));
    expect(badWhere).toBeInstanceOf(InvalidRequestError);
    expect(badWhere.message).toContain("unknown field 'colour'");
    const badPrior = await rejection(client.ask(TREE, { question: "?", prior: "lexical" }));
    expect(badPrior).toBeInstanceOf(InvalidRequestError);
    expect(badPrior.status).toBe(400);
    expect(badPrior.message).toContain("is not SIGNAL=WEIGHT");
  });

  it("lets a read-only key ask but not ingest (PermissionDeniedError)", async () => {
    expect((await readOnly.ask(TREE, QUESTION)).answer).toBe(asked.answer);
    const error = await rejection(readOnly.ingest(TREE, { text: "not allowed" }));
    expect(error).toBeInstanceOf(PermissionDeniedError);
    expect(error.status).toBe(403);
    expect(error.type).toBe("forbidden");
    expect(error.message).toContain("write");
  });

  it("hides a tree from another tenant (NotFoundError)", async () => {
    const error = await rejection(otherTenant.getTree(TREE));
    expect(error).toBeInstanceOf(NotFoundError);
    expect(error.status).toBe(404);
    expect(error.body).toEqual({ type: "not_found", message: error.message, code: 404 });
    expect((await otherTenant.listTrees()).trees).toEqual([]);
    // Streamed: the same typed error (a 404 before the stream, or an error event in it).
    const streamed = await rejection(collect(otherTenant.askStream(TREE, QUESTION)));
    expect(streamed).toBeInstanceOf(NotFoundError);
    expect(streamed.status).toBe(404);
  });

  it("rejects a bad key (AuthenticationError)", async () => {
    const bad = new MegaContextClient({
      baseUrl: live.baseUrl,
      apiKey: "mck_000000000000_notarealsecretnotarealsecret",
    });
    const error = await rejection(bad.listTrees());
    expect(error).toBeInstanceOf(AuthenticationError);
    expect(error.status).toBe(401);
    expect(error.type).toBe("unauthorized");
    const none = await rejection(new MegaContextClient({ baseUrl: live.baseUrl }).listTrees());
    expect(none).toBeInstanceOf(AuthenticationError);
  });

  it("rejects bad input (InvalidRequestError, 422 and 400)", async () => {
    const empty = await rejection(client.ask(TREE, { question: "" }));
    expect(empty).toBeInstanceOf(InvalidRequestError);
    expect(empty.status).toBe(422);
    expect(empty.type).toBe("invalid_request");
    expect(empty.message).toContain("question");
    const tooFew = await rejection(client.ask(TREE, { question: "?", maxNewTokens: 0 }));
    expect(tooFew.status).toBe(422);
    const badName = await rejection(client.getTree("bad name"));
    expect(badName).toBeInstanceOf(InvalidRequestError);
    expect(badName.status).toBe(400);
    // ".." cannot travel in a URL's path: refused before any request.
    const dots = await rejection(client.getTree(".."));
    expect(dots).toBeInstanceOf(InvalidRequestError);
    expect(dots.status).toBeUndefined();
  });

  it("generates", async () => {
    const generated = await client.generate(TREE, { prompt: "Line 61:", maxNewTokens: 4 });
    expect(sortedKeys(generated)).toEqual(fields("Generated"));
    expect(typeof generated.text).toBe("string");
    expect(generated.tokens).toBeLessThanOrEqual(4);
  });

  it("removes a source", async () => {
    const { sources } = await client.listSources(TREE);
    const source = sources.find((s) => s.source === "notes.txt");
    expect(source).toBeDefined();
    const removed = await client.removeSource(TREE, source!.id);
    expect(removed).toEqual({ removed_tokens: ingestedTokens });
    expect((await client.listSources(TREE)).sources.map((s) => s.id)).not.toContain(source!.id);
    const again = await rejection(client.removeSource(TREE, source!.id));
    expect(again).toBeInstanceOf(NotFoundError);
  });

  it("deletes the tree", async () => {
    await expect(client.deleteTree(TREE)).resolves.toBeUndefined();
    const error = await rejection(client.getTree(TREE));
    expect(error).toBeInstanceOf(NotFoundError);
    expect((await client.listTrees()).trees.map((t) => t.name)).not.toContain(TREE);
  });
});

describe("live uploads and traces", () => {
  const UPLOADS = "sdk-uploads";
  const RAW = "sdk-uploads-raw";
  // Not UTF-8 as bytes: "ä", "ü", "é" are single bytes in latin-1.
  const LATIN1 = Array.from(
    { length: 12 },
    (_, i) => `Zeile ${i}: der Hafenmeister zählt ${i * 2} Schiffe über Nacht, café au lait\n`,
  ).join("");
  const latin1Bytes = Uint8Array.from(LATIN1, (c) => c.charCodeAt(0));
  const BINARY = Uint8Array.from({ length: 1024 }, (_, i) => i % 256);

  /** The last 40 characters of the raw text ending the tree's working context. */
  async function tail(tree: string): Promise<string> {
    const { entries } = await client.context(tree);
    const text = entries.at(-1)!.text;
    expect(text.length).toBeGreaterThanOrEqual(40);
    return text.slice(-40);
  }

  it("uploads latin-1 bytes with their encoding", async () => {
    await client.createTree(UPLOADS);
    await client.createTree(RAW);
    const done = await client.upload(UPLOADS, latin1Bytes, {
      name: "hafen.txt",
      encoding: "latin-1",
    });
    expect(sortedKeys(done)).toEqual(fields("Ingested"));
    expect(done.tokens).toBeGreaterThan(0);
    expect([done.start, done.stop, done.duplicate_of]).toEqual([0, done.tokens, null]);
    expect(LATIN1.endsWith(await tail(UPLOADS))).toBe(true); // decoded as latin-1, not mangled
    const { sources } = await client.listSources(UPLOADS);
    expect(sources.map((s) => s.source)).toEqual(["hafen.txt"]);
    expect(sources[0]!.tokens).toBe(done.tokens);
    const again = await client.upload(UPLOADS, latin1Bytes, { encoding: "latin-1" });
    expect([again.tokens, again.duplicate_of]).toEqual([0, "hafen.txt"]);
  });

  it("reports progress, ending with the same Ingested as the final event", async () => {
    const calls: [number, number][] = [];
    const bytes = new TextEncoder().encode(TEXT.join("\n"));
    const done = await client.upload(UPLOADS, bytes, {
      name: "notes.txt",
      onProgress: (tokens, total) => calls.push([tokens, total]),
    });
    expect(done.tokens).toBeGreaterThan(0);
    expect(done.stop - done.start).toBe(done.tokens);
    expect(calls.length).toBeGreaterThan(0);
    const tokens = calls.map(([t]) => t);
    expect(tokens).toEqual([...tokens].sort((a, b) => a - b));
    expect(calls.at(-1)).toEqual([done.tokens, done.tokens]);
    expect(new Set(calls.map(([, total]) => total))).toEqual(new Set([done.tokens]));
    expect((await client.getTree(UPLOADS)).tokens).toBe(done.stop);
    expect((await client.listSources(UPLOADS)).sources.map((s) => s.source)).toEqual([
      "hafen.txt",
      "notes.txt",
    ]);

    // The same bytes to a fresh tree, its events read raw: the last one is what upload gave
    // there (that tree starts empty, so start is 0).
    const response = await fetch(`${live.baseUrl}/v1/trees/${RAW}/uploads?events=true`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${live.keys.readWrite}`,
        "content-type": "application/octet-stream",
      },
      body: bytes,
    });
    expect(response.headers.get("content-type")).toContain("text/event-stream");
    const events = [];
    for await (const event of parseEventStream(response.body!)) events.push(event);
    expect(events.map((e) => e.event)).toEqual([...calls.map(() => "progress"), "ingested"]);
    expect(JSON.parse(events.at(-1)!.data)).toEqual({ ...done, start: 0, stop: done.tokens });
  });

  it("rejects binary bytes with InvalidRequestError, streamed or not", async () => {
    for (const onProgress of [undefined, () => {}]) {
      const error = await rejection(
        client.upload(UPLOADS, BINARY, { name: "blob.bin", onProgress }),
      );
      expect(error).toBeInstanceOf(InvalidRequestError);
      expect(error.status).toBe(400);
      expect(error.type).toBe("invalid_request");
      expect(error.message).toContain("blob.bin is empty or binary");
    }
    const wrong = await rejection(client.upload(UPLOADS, latin1Bytes, { encoding: "utf-8" }));
    expect(wrong).toBeInstanceOf(InvalidRequestError);
    expect(wrong.message).toContain("not utf-8 text");
    const denied = await rejection(readOnly.upload(UPLOADS, latin1Bytes));
    expect(denied).toBeInstanceOf(PermissionDeniedError);
    expect((await client.listSources(UPLOADS)).sources).toHaveLength(2);
  });

  it("lists no traces, and a missing trace is NotFoundError", async () => {
    // `megacontext serve` opens its sessions without tracing (SessionConfig(trace=False)), and
    // global-setup gives the tests no way to run a traced session on the service's root, so
    // no tree here has a trace: tests/server/test_client.py reads real ones.
    const list = await client.listTraces(UPLOADS);
    expect(list).toEqual({ traces: [] });
    expect(sortedKeys(list)).toEqual(fields("TraceList"));
    const missing = await rejection(client.getTrace(UPLOADS, "session-0.jsonl"));
    expect(missing).toBeInstanceOf(NotFoundError);
    expect(missing.status).toBe(404);
    expect(missing.message).toContain("session-0.jsonl");
    expect(await rejection(otherTenant.listTraces(UPLOADS))).toBeInstanceOf(NotFoundError);
  });

  it("deletes the upload trees", async () => {
    await client.deleteTree(UPLOADS);
    await client.deleteTree(RAW);
    const names = (await client.listTrees()).trees.map((t) => t.name);
    expect(names).not.toContain(UPLOADS);
    expect(names).not.toContain(RAW);
  });
});
