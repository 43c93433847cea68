/** Retries, timeouts, typed errors and the wire format, against a scripted node:http stub. */

import { afterEach, describe, expect, it } from "vitest";
import {
  type Annotation,
  AuthenticationError,
  ConflictError,
  ConnectionError,
  InvalidRequestError,
  MegaContextClient,
  MegaContextError,
  NotFoundError,
  PayloadTooLargeError,
  PermissionDeniedError,
  RateLimitError,
  ServerError,
  TimeoutError,
  parseRetryAfter,
} from "../src/index.js";
import { ANSWER, type Handler, type Stub, error, event, json, startStub } from "./stub.js";

const KEY = "mck_0123456789ab_secretsecretsecretsecret";
const TREES = { trees: [{ name: "notes", tokens: 1, levels: 1, sources: 1 }] };
const NOTE: Annotation = {
  id: 7,
  level: 0,
  start: 0,
  stop: 5,
  note: "check this",
  tags: ["todo"],
  version: 1,
  created_by: "t/0123456789ab",
  created_at: "2025-01-01T00:00:00+00:00",
  updated_by: "t/0123456789ab",
  updated_at: "2025-01-01T00:00:00+00:00",
};
let stub: Stub | undefined;

afterEach(async () => {
  await stub?.close();
  stub = undefined;
});

async function serve(handler: Handler, options: { timeoutMs?: number; maxRetries?: number } = {}) {
  stub = await startStub(handler);
  return new MegaContextClient({ baseUrl: stub.url, apiKey: KEY, ...options });
}

async function rejection(promise: Promise<unknown>): Promise<MegaContextError> {
  try {
    await promise;
  } catch (caught) {
    expect(caught).toBeInstanceOf(MegaContextError);
    return caught as MegaContextError;
  }
  throw new Error("expected the call to fail");
}

describe("retries", () => {
  it("retries 429 with Retry-After: 0 and succeeds on the third request", async () => {
    const client = await serve((_, res, i) =>
      i < 2 ? error(res, 429, "rate_limited", { "retry-after": "0" }) : json(res, 200, TREES),
    );
    expect(await client.listTrees()).toEqual(TREES);
    expect(stub!.requests).toHaveLength(3);
    for (const request of stub!.requests) {
      expect(request.method).toBe("GET");
      expect(request.url).toBe("/v1/trees");
      expect(request.headers.authorization).toBe(`Bearer ${KEY}`);
    }
  });

  it("gives up after maxRetries and throws the last error", async () => {
    const client = await serve((_, res) => error(res, 503, "unavailable", { "retry-after": "0" }));
    const failed = await rejection(client.listTrees());
    expect(failed).toBeInstanceOf(ServerError);
    expect(failed.status).toBe(503);
    expect(failed.retryAfter).toBe(0);
    expect(stub!.requests).toHaveLength(3); // maxRetries defaults to 2
  });

  it("honours maxRetries per client and per call", async () => {
    const client = await serve(
      (_, res) => error(res, 500, "server_error", { "retry-after": "0" }),
      {
        maxRetries: 0,
      },
    );
    await rejection(client.listTrees());
    expect(stub!.requests).toHaveLength(1);
    await rejection(client.listTrees({ maxRetries: 1 }));
    expect(stub!.requests).toHaveLength(3);
  });

  it("retries 408 and 409, but not a 409 from createTree", async () => {
    const client = await serve((_, res, i) => {
      if (i === 0) return error(res, 408, "timeout", { "retry-after": "0" });
      if (i === 1) return error(res, 409, "conflict", { "retry-after": "0" });
      if (i === 2) return json(res, 200, { tokens: 3, start: 0, stop: 3, duplicate_of: null });
      return error(res, 409, "conflict", { "retry-after": "0" });
    });
    expect((await client.ingest("notes", { text: "abc" })).tokens).toBe(3);
    expect(stub!.requests).toHaveLength(3);
    const exists = await rejection(client.createTree("notes"));
    expect(exists).toBeInstanceOf(ConflictError);
    expect(stub!.requests).toHaveLength(4);
  });

  it.each([
    ["version_conflict", 1],
    ["on_hold", 1],
    ["conflict", 3],
  ])("sends an edit answered by a 409 %s %i time(s)", async (type, sent) => {
    const client = await serve((_, res) => error(res, 409, type, { "retry-after": "0" }));
    const failed = await rejection(client.editAnnotation("notes", NOTE, { note: "changed" }));
    expect(failed).toBeInstanceOf(ConflictError);
    expect([failed.status, failed.type]).toEqual([409, type]);
    expect(stub!.requests).toHaveLength(sent); // maxRetries defaults to 2
    for (const request of stub!.requests) {
      expect(request.method).toBe("PATCH");
      expect(request.url).toBe("/v1/trees/notes/explorer/annotations/7");
    }
  });

  it("never retries a version_conflict or on_hold 409 on the other calls either", async () => {
    const client = await serve((req, res) =>
      error(res, 409, req.url.includes("/annotations/") ? "version_conflict" : "on_hold", {
        "retry-after": "0",
      }),
    );
    const deleted = await rejection(client.deleteAnnotation("notes", NOTE));
    expect([deleted.constructor, deleted.type]).toEqual([ConflictError, "version_conflict"]);
    expect(stub!.requests).toHaveLength(1);
    const held = await rejection(client.removeSource("notes", 3));
    expect([held.constructor, held.type]).toEqual([ConflictError, "on_hold"]);
    expect(stub!.requests).toHaveLength(2);
  });

  it.each([
    [400, InvalidRequestError],
    [401, AuthenticationError],
    [403, PermissionDeniedError],
    [404, NotFoundError],
    [413, PayloadTooLargeError],
    [422, InvalidRequestError],
  ])("never retries %i", async (status, Class) => {
    const client = await serve((_, res) => error(res, status, "nope", { "retry-after": "0" }));
    const failed = await rejection(client.getTree("notes"));
    expect(failed).toBeInstanceOf(Class);
    expect(failed.status).toBe(status);
    expect(failed.type).toBe("nope");
    expect(failed.message).toBe("stub says nope");
    expect(failed.body).toEqual({ type: "nope", message: "stub says nope", code: status });
    expect(stub!.requests).toHaveLength(1);
  });

  it("throws RateLimitError once 429s outlast the retries", async () => {
    const client = await serve(
      (_, res) => error(res, 429, "rate_limited", { "retry-after": "0" }),
      {
        maxRetries: 1,
      },
    );
    expect(await rejection(client.models())).toBeInstanceOf(RateLimitError);
    expect(stub!.requests).toHaveLength(2);
  });

  it("backs off exponentially without Retry-After", async () => {
    const client = await serve((_, res, i) =>
      i === 0 ? error(res, 502, "bad_gateway") : json(res, 200, TREES),
    );
    const started = performance.now();
    await client.listTrees();
    const waited = performance.now() - started;
    expect(waited).toBeGreaterThanOrEqual(240); // the first backoff is 250-500 ms
    expect(waited).toBeLessThan(5_000);
  });

  it("reads an error body that is not the service's", async () => {
    const client = await serve(
      (_, res) => {
        res.writeHead(502, { "content-type": "text/html" });
        res.end("<html>bad gateway</html>");
      },
      { maxRetries: 0 },
    );
    const failed = await rejection(client.health());
    expect(failed).toBeInstanceOf(ServerError);
    expect(failed.message).toContain("bad gateway");
    expect(failed.type).toBe("http_error");
  });

  it("parses Retry-After", () => {
    expect(parseRetryAfter(null)).toBeUndefined();
    expect(parseRetryAfter("0")).toBe(0);
    expect(parseRetryAfter(" 1.5 ")).toBe(1.5);
    expect(parseRetryAfter("soon")).toBeUndefined();
    const later = parseRetryAfter(new Date(Date.now() + 30_000).toUTCString());
    expect(later).toBeGreaterThan(25);
    expect(later).toBeLessThanOrEqual(30);
  });
});

describe("timeouts and network failures", () => {
  it("throws TimeoutError when the service does not answer", async () => {
    const client = await serve(() => {}, { timeoutMs: 150, maxRetries: 0 });
    const failed = await rejection(client.health());
    expect(failed).toBeInstanceOf(TimeoutError);
    expect(failed.type).toBe("timeout");
    expect(failed.status).toBeUndefined();
    expect(stub!.requests).toHaveLength(1);
  });

  it("retries a timeout", async () => {
    const client = await serve((_, res, i) => (i === 0 ? undefined : json(res, 200, TREES)), {
      timeoutMs: 200,
      maxRetries: 1,
    });
    expect(await client.listTrees()).toEqual(TREES);
    expect(stub!.requests).toHaveLength(2);
  });

  it("throws ConnectionError when nothing listens", async () => {
    const closed = await startStub(() => {});
    const url = closed.url;
    await closed.close();
    const client = new MegaContextClient({ baseUrl: url, maxRetries: 0 });
    const failed = await rejection(client.health());
    expect(failed).toBeInstanceOf(ConnectionError);
    expect(failed.type).toBe("connection_error");
  });

  it("stops at once when the caller aborts", async () => {
    const client = await serve(() => {});
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error("caller gave up")), 100);
    await expect(client.health({ signal: controller.signal })).rejects.toThrow("caller gave up");
    expect(stub!.requests).toHaveLength(1);
  });
});

describe("wire format", () => {
  it("sends snake_case bodies and encodes path segments", async () => {
    const client = await serve((req, res) => {
      if (req.url.endsWith("/ask")) return json(res, 200, ANSWER);
      if (req.url.endsWith("/generate")) return json(res, 200, { text: "x", tokens: 1 });
      if (req.method === "DELETE" && req.url.includes("/sources/")) {
        return json(res, 200, { removed_tokens: 5 });
      }
      if (req.method === "DELETE") {
        res.writeHead(204);
        return res.end();
      }
      return json(res, 200, { tokens: 1, start: 0, stop: 1, duplicate_of: null });
    });
    await client.ask("my notes", {
      question: "q?",
      maxNewTokens: 5,
      focusSteps: 2,
      remember: true,
    });
    await client.generate("t", { prompt: "p", maxNewTokens: 3, stop: ["\n"] });
    await client.ingest("t", { text: "hello", metadata: { path: "a.txt" } });
    await client.createTree("t");
    expect(await client.removeSource("t", 7)).toEqual({ removed_tokens: 5 });
    expect(await client.deleteTree("t")).toBeUndefined();
    const [ask, generate, ingest, create, remove, drop] = stub!.requests;
    expect(ask!.url).toBe("/v1/trees/my%20notes/ask");
    expect(JSON.parse(ask!.body)).toEqual({
      question: "q?",
      max_new_tokens: 5,
      focus_steps: 2,
      remember: true,
    });
    expect(ask!.headers["content-type"]).toBe("application/json");
    expect(JSON.parse(generate!.body)).toEqual({ prompt: "p", max_new_tokens: 3, stop: ["\n"] });
    expect(JSON.parse(ingest!.body)).toEqual({ text: "hello", metadata: { path: "a.txt" } });
    expect([create!.method, create!.url, JSON.parse(create!.body)]).toEqual([
      "POST",
      "/v1/trees",
      { name: "t" },
    ]);
    expect([remove!.method, remove!.url]).toEqual(["DELETE", "/v1/trees/t/sources/7"]);
    expect([drop!.method, drop!.url, drop!.body]).toEqual(["DELETE", "/v1/trees/t", ""]);
  });

  it("sends one Idempotency-Key per POST call, the same on its retries", async () => {
    const client = await serve((req, res, i) =>
      i === 0
        ? error(res, 503, "unavailable", { "retry-after": "0" })
        : req.method === "GET"
          ? json(res, 200, TREES)
          : json(res, 200, { tokens: 1, start: 0, stop: 1, duplicate_of: null }),
    );
    await client.ingest("t", { text: "a", force: true });
    await client.ingest("t", { text: "a", force: true });
    await client.listTrees();
    const keys = stub!.requests.map((r) => r.headers["idempotency-key"]);
    expect(keys).toHaveLength(4);
    expect(keys[0]).toMatch(/^[0-9a-f-]{32,36}$/);
    expect(keys[1]).toBe(keys[0]);
    expect(keys[2]).not.toBe(keys[0]);
    expect(keys[3]).toBeUndefined();
  });

  it("sends context's body and provenance's query, a key only on the POST", async () => {
    const client = await serve((req, res) =>
      req.url.includes("/provenance")
        ? json(res, 200, { spans: [] })
        : json(res, 200, { W_max: 64, size: 0, entries: [], focus_steps: 0 }),
    );
    await client.context("my notes", {
      question: "q?",
      wMax: 64,
      focusSteps: 1,
      pins: [[4, 8]],
      expand: [[1, 0]],
      collapse: [[2, 0]],
    });
    await client.context("t");
    expect(await client.provenance("t", 0, 8)).toEqual({ spans: [] });
    const [context, plain, provenance] = stub!.requests;
    expect([context!.method, context!.url]).toEqual(["POST", "/v1/trees/my%20notes/context"]);
    expect(JSON.parse(context!.body)).toEqual({
      question: "q?",
      W_max: 64,
      focus_steps: 1,
      pins: [[4, 8]],
      expand: [[1, 0]],
      collapse: [[2, 0]],
    });
    expect(context!.headers["idempotency-key"]).toMatch(/^[0-9a-f-]{32,36}$/);
    expect(JSON.parse(plain!.body)).toEqual({});
    expect([provenance!.method, provenance!.url]).toEqual([
      "GET",
      "/v1/trees/t/provenance?start=0&stop=8",
    ]);
    expect(provenance!.headers["idempotency-key"]).toBeUndefined();
  });

  it("refuses non-integers in context and provenance without a request", async () => {
    const client = await serve((_, res) => json(res, 200, {}));
    const refusals = await Promise.all([
      rejection(client.provenance("t", 0, 8.5)),
      rejection(client.provenance("t", Number.NaN, 8)),
      rejection(client.context("t", { wMax: 1.5 })),
      rejection(client.context("t", { focusSteps: Infinity })),
      rejection(client.context("t", { pins: [[4, 8.5]] })),
      rejection(client.context("t", { expand: [[1] as unknown as [number, number]] })),
      rejection(client.provenance("..", 0, 8)),
    ]);
    for (const refused of refusals) {
      expect(refused).toBeInstanceOf(InvalidRequestError);
      expect(refused.status).toBeUndefined();
    }
    expect(refusals[4]!.message).toContain("pins[0]");
    expect(stub!.requests).toHaveLength(0);
  });

  it("sends the annotation calls: routes, bodies, queries, a key only on the POST", async () => {
    const edited = { ...NOTE, note: "changed", tags: [], version: 2 };
    const change = { action: "create", version: 1, note: "n", tags: [], actor: "t/x", at: "" };
    const client = await serve((req, res) => {
      if (req.method === "POST") return json(res, 201, NOTE);
      if (req.method === "PATCH") return json(res, 200, edited);
      if (req.method === "DELETE") {
        res.writeHead(204);
        return res.end();
      }
      return json(res, 200, req.url.includes("/history") ? [change] : [NOTE]);
    });
    const made = await client.annotate("my notes", {
      level: 0,
      start: 0,
      stop: 5,
      note: "check this",
      tags: ["todo"],
    });
    expect(made).toEqual(NOTE);
    await client.annotate("t", { level: 1, start: 32, stop: 64, note: "" });
    expect(await client.listAnnotations("t")).toEqual([NOTE]);
    await client.listAnnotations("t", { start: 3, stop: 9 });
    await client.listAnnotations("t", { start: 3 });
    expect(await client.editAnnotation("t", NOTE, { note: "changed" })).toEqual(edited);
    await client.editAnnotation("t", edited, { note: "again", tags: ["a", "b"] });
    expect(await client.deleteAnnotation("t", edited)).toBeUndefined();
    expect(await client.annotationHistory("t", 7)).toEqual([change]);
    const sent = stub!.requests.map((r) => [r.method, r.url, r.body && JSON.parse(r.body)]);
    const notes = "/v1/trees/t/explorer/annotations";
    expect(sent).toEqual([
      [
        "POST",
        "/v1/trees/my%20notes/explorer/annotations",
        { level: 0, start: 0, stop: 5, note: "check this", tags: ["todo"] },
      ],
      ["POST", notes, { level: 1, start: 32, stop: 64, note: "", tags: [] }],
      ["GET", notes, ""],
      ["GET", `${notes}?start=3&stop=9`, ""],
      ["GET", `${notes}?start=3`, ""],
      ["PATCH", `${notes}/7`, { version: 1, note: "changed", tags: [] }],
      ["PATCH", `${notes}/7`, { version: 2, note: "again", tags: ["a", "b"] }],
      ["DELETE", `${notes}/7?version=2`, ""],
      ["GET", `${notes}/7/history`, ""],
    ]);
    const keys = stub!.requests.map((r) => r.headers["idempotency-key"] !== undefined);
    expect(keys).toEqual([true, true, false, false, false, false, false, false, false]);
    expect(stub!.requests[5]!.headers["content-type"]).toBe("application/json");
  });

  it("refuses bad annotation input without a request", async () => {
    const client = await serve((_, res) => json(res, 200, {}));
    const span = { level: 0, start: 0, stop: 5, note: "n" };
    const refusals = await Promise.all([
      rejection(client.listAnnotations("t", { start: 0.5 })),
      rejection(client.listAnnotations("t", { stop: Number.NaN })),
      rejection(client.annotate("t", { ...span, level: 1.5 })),
      rejection(client.annotate("t", { ...span, note: 5 as unknown as string })),
      rejection(client.annotate("t", { ...span, tags: ["a", 1] as unknown as string[] })),
      rejection(client.editAnnotation("t", { ...NOTE, version: 1.5 }, { note: "n" })),
      rejection(client.editAnnotation("t", undefined as unknown as Annotation, { note: "n" })),
      rejection(client.editAnnotation("t", NOTE, { note: "n", tags: "a" as unknown as string[] })),
      rejection(client.deleteAnnotation("t", { id: 7 } as Annotation)),
      rejection(client.annotationHistory("t", 1.5)),
      rejection(client.annotate("..", span)),
    ]);
    for (const refused of refusals) {
      expect(refused).toBeInstanceOf(InvalidRequestError);
      expect(refused.status).toBeUndefined();
    }
    expect(refusals[0]!.message).toContain("start is an integer");
    expect(refusals[3]!.message).toContain("note is a string");
    expect(refusals[4]!.message).toContain("tags[1] is a string");
    expect(refusals[5]!.message).toContain("integer id and version");
    expect(refusals[9]!.message).toContain("annotationId is an integer");
    expect(stub!.requests).toHaveLength(0);
  });

  it("refuses a source id that is not an integer without a request", async () => {
    const client = await serve((_, res) => json(res, 200, {}));
    expect(await rejection(client.removeSource("t", 1.5))).toBeInstanceOf(InvalidRequestError);
    expect(stub!.requests).toHaveLength(0);
  });
});

function streaming(...chunks: string[]): Handler {
  return async (_, res) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    for (const chunk of chunks) {
      res.write(chunk);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    res.end();
  };
}

describe("askStream", () => {
  it("yields text pieces then the answer, whatever the chunking", async () => {
    const body =
      `: comment\r\n${event("text", { text: " 4" })}${event("text", { text: "2" })}`.replace(
        /\n/g,
        "\r\n",
      ) + event("answer", ANSWER);
    const split = [body.slice(0, 7), body.slice(7, 30), body.slice(30, 31), body.slice(31)];
    const client = await serve(streaming(...split));
    const seen = [];
    for await (const e of client.askStream("t", { question: "q", maxNewTokens: 2 })) seen.push(e);
    expect(seen).toEqual([
      { type: "text", text: " 4" },
      { type: "text", text: "2" },
      { type: "answer", answer: ANSWER },
    ]);
    const request = stub!.requests[0]!;
    expect(JSON.parse(request.body)).toEqual({ question: "q", max_new_tokens: 2, stream: true });
    expect(request.headers.accept).toBe("text/event-stream");
  });

  it("throws the typed error of an error event after the pieces before it", async () => {
    const failure = { error: { type: "server_error", message: "boom", code: 500 } };
    const client = await serve(streaming(event("text", { text: "a" }), event("error", failure)));
    const seen: string[] = [];
    const failed = await rejection(
      (async () => {
        for await (const e of client.askStream("t", { question: "q" })) seen.push(e.type);
      })(),
    );
    expect(seen).toEqual(["text"]);
    expect(failed).toBeInstanceOf(ServerError);
    expect(failed.message).toBe("boom");
    expect(stub!.requests).toHaveLength(1); // an answer under way is never asked again
  });

  it("retries a retryable error event that comes before any piece", async () => {
    const busy = { error: { type: "conflict", message: "busy", code: 409 } };
    const client = await serve((req, res, i) =>
      i === 0
        ? streaming(event("error", busy))(req, res, i)
        : streaming(event("text", { text: " 42" }), event("answer", ANSWER))(req, res, i),
    );
    const seen = [];
    for await (const e of client.askStream("t", { question: "q" })) seen.push(e.type);
    expect(seen).toEqual(["text", "answer"]);
    expect(stub!.requests).toHaveLength(2);
  });

  it("throws NotFoundError for an error event with code 404, without retrying", async () => {
    const missing = { error: { type: "not_found", message: "no tree named 'x'", code: 404 } };
    const client = await serve(streaming(event("error", missing)));
    const failed = await rejection(client.askStream("x", { question: "q" }).next());
    expect(failed).toBeInstanceOf(NotFoundError);
    expect(stub!.requests).toHaveLength(1);
  });

  it("throws ConnectionError when the stream ends before its answer", async () => {
    const client = await serve(streaming(event("text", { text: "a" })), { maxRetries: 0 });
    const stream = client.askStream("t", { question: "q" });
    expect(await stream.next()).toEqual({ done: false, value: { type: "text", text: "a" } });
    expect(await rejection(stream.next())).toBeInstanceOf(ConnectionError);
  });

  it("throws TimeoutError when a stream stalls", async () => {
    const client = await serve(
      (_, res) => {
        res.writeHead(200, { "content-type": "text/event-stream" });
        res.write(event("text", { text: "a" }));
      },
      { timeoutMs: 200, maxRetries: 0 },
    );
    const stream = client.askStream("t", { question: "q" });
    expect((await stream.next()).value).toEqual({ type: "text", text: "a" });
    expect(await rejection(stream.next())).toBeInstanceOf(TimeoutError);
  });

  it("retries an HTTP error before the stream", async () => {
    const client = await serve((req, res, i) =>
      i === 0
        ? error(res, 429, "rate_limited", { "retry-after": "0" })
        : streaming(event("answer", ANSWER))(req, res, i),
    );
    const seen = [];
    for await (const e of client.askStream("t", { question: "q" })) seen.push(e);
    expect(seen).toEqual([{ type: "answer", answer: ANSWER }]);
  });
});

describe("upload", () => {
  const INGESTED = { tokens: 9, start: 0, stop: 9, duplicate_of: null };
  const BUSY = { error: { type: "conflict", message: "busy", code: 409 } };
  const LATIN1 = new Uint8Array([0x63, 0x61, 0x66, 0xe9, 0x0a]); // "café\n" in latin-1

  function query(url: string): Record<string, string> {
    return Object.fromEntries(new URL(url, "http://stub").searchParams);
  }

  it("sends the bytes and the query, the same on a retry, with one Idempotency-Key", async () => {
    const client = await serve((_, res, i) =>
      i === 0 ? error(res, 503, "unavailable", { "retry-after": "0" }) : json(res, 200, INGESTED),
    );
    const done = await client.upload("my notes", LATIN1, {
      name: "café.txt",
      source: "file:///café.txt",
      encoding: "latin-1",
      force: true,
    });
    expect(done).toEqual(INGESTED);
    const [first, retry] = stub!.requests;
    expect(stub!.requests).toHaveLength(2);
    for (const request of [first!, retry!]) {
      expect(request.method).toBe("POST");
      expect(request.url.split("?")[0]).toBe("/v1/trees/my%20notes/uploads");
      // Exactly the query parameters drift.test.ts checks against the OpenAPI document.
      expect(query(request.url)).toEqual({
        name: "café.txt",
        source: "file:///café.txt",
        encoding: "latin-1",
        force: "true",
      });
      expect(request.headers["content-type"]).toBe("application/octet-stream");
      expect([...request.bytes]).toEqual([...LATIN1]);
    }
    expect(first!.headers["idempotency-key"]).toMatch(/^[0-9a-f-]{32,36}$/);
    expect(retry!.headers["idempotency-key"]).toBe(first!.headers["idempotency-key"]);
  });

  it("sends an ArrayBuffer, a Blob, a File (its name) and a string (UTF-8)", async () => {
    const client = await serve((_, res) => json(res, 200, INGESTED));
    await client.upload("t", LATIN1.buffer);
    await client.upload("t", new Blob([LATIN1]));
    await client.upload("t", new File([LATIN1], "cafe.txt"), { encoding: "latin-1" });
    await client.upload("t", new File([LATIN1], "cafe.txt"), { name: "other.txt" });
    await client.upload("t", "café\n", { encoding: "UTF-8" });
    const [buffer, blob, file, named, text] = stub!.requests;
    for (const request of [buffer!, blob!, file!, named!]) {
      expect([...request.bytes]).toEqual([...LATIN1]);
    }
    expect(query(buffer!.url)).toEqual({});
    expect(query(file!.url)).toEqual({ name: "cafe.txt", encoding: "latin-1" });
    expect(query(named!.url)).toEqual({ name: "other.txt" });
    expect(text!.body).toBe("café\n");
    expect(query(text!.url)).toEqual({ encoding: "UTF-8" });
  });

  it("refuses a string in another encoding, and what is not bytes, without a request", async () => {
    const client = await serve((_, res) => json(res, 200, INGESTED));
    const refusals = await Promise.all([
      rejection(client.upload("t", "café", { encoding: "latin-1" })),
      rejection(client.upload("t", 42 as unknown as string)),
      rejection(client.upload("..", LATIN1)),
    ]);
    for (const refused of refusals) {
      expect(refused).toBeInstanceOf(InvalidRequestError);
      expect(refused.status).toBeUndefined();
    }
    expect(refusals[0]!.message).toContain("UTF-8");
    expect(stub!.requests).toHaveLength(0);
  });

  it("reports progress, then resolves with the ingested event's body", async () => {
    const client = await serve(
      streaming(
        event("progress", { tokens: 4, total: 9 }),
        event("progress", { tokens: 9, total: 9 }),
        event("ingested", INGESTED),
      ),
    );
    const calls: [number, number][] = [];
    const done = await client.upload("t", LATIN1, {
      onProgress: (tokens, total) => calls.push([tokens, total]),
    });
    expect(done).toEqual(INGESTED);
    expect(calls).toEqual([
      [4, 9],
      [9, 9],
    ]);
    const request = stub!.requests[0]!;
    expect(query(request.url)).toEqual({ events: "true" });
    expect(request.headers.accept).toBe("text/event-stream");
  });

  it("retries an error event before any progress, never one after", async () => {
    const retried = await serve((req, res, i) =>
      i === 0
        ? streaming(event("error", BUSY))(req, res, i)
        : streaming(event("progress", { tokens: 9, total: 9 }), event("ingested", INGESTED))(
            req,
            res,
            i,
          ),
    );
    const calls: number[] = [];
    expect(await retried.upload("t", LATIN1, { onProgress: (t) => calls.push(t) })).toEqual(
      INGESTED,
    );
    expect(calls).toEqual([9]);
    expect(stub!.requests).toHaveLength(2);
    await stub!.close();

    const client = await serve(
      streaming(event("progress", { tokens: 4, total: 9 }), event("error", BUSY)),
    );
    const failed = await rejection(client.upload("t", LATIN1, { onProgress: () => {} }));
    expect(failed).toBeInstanceOf(ConflictError);
    expect(failed.message).toBe("busy");
    expect(stub!.requests).toHaveLength(1);
  });

  it("throws ConnectionError when the stream ends before its ingested event", async () => {
    const client = await serve(streaming(event("progress", { tokens: 4, total: 9 })), {
      maxRetries: 0,
    });
    const failed = await rejection(client.upload("t", LATIN1, { onProgress: () => {} }));
    expect(failed).toBeInstanceOf(ConnectionError);
  });
});
