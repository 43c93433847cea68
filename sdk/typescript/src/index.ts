/**
 * @megacontext/client: a fetch-based client for the MegaContext HTTP service (`megacontext
 * serve`). No runtime dependencies; Node 20+ (global fetch) or any runtime with fetch.
 */

import {
  ConnectionError,
  InvalidRequestError,
  MegaContextError,
  TimeoutError,
  errorFromResponse,
} from "./errors.js";
import { parseEventStream, type ServerSentEvent } from "./sse.js";
import type {
  Annotation,
  AnnotationChange,
  AnnotationCreate,
  AnnotationEdit,
  Answer,
  Ask,
  AskStreamEvent,
  FocusRequest,
  Generate,
  Generated,
  Health,
  Ingest,
  Ingested,
  ModelList,
  ProvenanceList,
  Removed,
  SourceList,
  Trace,
  TraceList,
  Tree,
  TreeCreate,
  TreeList,
  WorkingContext,
} from "./types.js";

export * from "./errors.js";
export * from "./types.js";
export { parseEventStream, type ServerSentEvent } from "./sse.js";

export const VERSION = "0.1.0";

/** Every route the client calls: method and path template, as in docs/openapi.json. */
export const ENDPOINTS = {
  health: ["GET", "/v1/health"],
  listTrees: ["GET", "/v1/trees"],
  createTree: ["POST", "/v1/trees"],
  getTree: ["GET", "/v1/trees/{tree}"],
  deleteTree: ["DELETE", "/v1/trees/{tree}"],
  ingest: ["POST", "/v1/trees/{tree}/sources"],
  upload: ["POST", "/v1/trees/{tree}/uploads"],
  listSources: ["GET", "/v1/trees/{tree}/sources"],
  removeSource: ["DELETE", "/v1/trees/{tree}/sources/{source_id}"],
  ask: ["POST", "/v1/trees/{tree}/ask"],
  context: ["POST", "/v1/trees/{tree}/context"],
  provenance: ["GET", "/v1/trees/{tree}/provenance"],
  listTraces: ["GET", "/v1/trees/{tree}/traces"],
  getTrace: ["GET", "/v1/trees/{tree}/traces/{name}"],
  generate: ["POST", "/v1/trees/{tree}/generate"],
  listAnnotations: ["GET", "/v1/trees/{tree}/explorer/annotations"],
  annotate: ["POST", "/v1/trees/{tree}/explorer/annotations"],
  editAnnotation: ["PATCH", "/v1/trees/{tree}/explorer/annotations/{annotation_id}"],
  deleteAnnotation: ["DELETE", "/v1/trees/{tree}/explorer/annotations/{annotation_id}"],
  annotationHistory: ["GET", "/v1/trees/{tree}/explorer/annotations/{annotation_id}/history"],
  models: ["GET", "/v1/models"],
} as const satisfies Record<string, readonly [string, string]>;

export type EndpointName = keyof typeof ENDPOINTS;

export interface MegaContextClientOptions {
  /** The service's address, e.g. "http://127.0.0.1:8000" (a trailing "/v1" is accepted). */
  baseUrl: string;
  /** An API key, `mck_<id>_<secret>` (`megacontext keys create`); health() needs none. */
  apiKey?: string | undefined;
  /** Per attempt: until the whole response is read; while streaming, between two chunks. */
  timeoutMs?: number | undefined;
  /** Retries of a request after 408, 409, 429, 5xx or a network failure. */
  maxRetries?: number | undefined;
  /** A fetch to use instead of the global one. */
  fetch?: typeof fetch | undefined;
}

/** Options of one call, overriding the client's. */
export interface CallOptions {
  /** Aborts the call (and its retries); the call rejects with the signal's reason. */
  signal?: AbortSignal | undefined;
  timeoutMs?: number | undefined;
  maxRetries?: number | undefined;
}

export interface IngestParams {
  text: string;
  /** A URI naming the source (default: an inline: URI of the text's hash). */
  source?: string | undefined;
  /** JSON metadata; "path" names the source in citations. */
  metadata?: Record<string, unknown> | undefined;
  /** Append even when the same content is already in the tree. */
  force?: boolean | undefined;
}

export interface UploadParams {
  /** The path citations show (default: a File's name). */
  name?: string | undefined;
  /** A URI naming the source (default: an inline: URI of the text's hash). */
  source?: string | undefined;
  /**
   * The bytes' text encoding, a Python codec name (latin-1, cp1252, utf-16, …); by default
   * UTF-8, else detected. A string is sent as UTF-8: no other encoding goes with one.
   */
  encoding?: string | undefined;
  /** Append even when the same content is already in the tree. */
  force?: boolean | undefined;
  /** Called as the text is ingested, with the tokens appended so far and in all. */
  onProgress?: ((tokens: number, total: number) => void) | undefined;
}

/** What upload() takes: a file's bytes, or text (sent as UTF-8). */
export type UploadData = Uint8Array | ArrayBuffer | Blob | string;

export interface AskParams {
  question: string;
  /** The most tokens the answer may have (1-1024; the service's default is 64). */
  maxNewTokens?: number | undefined;
  /** Refocusing steps (0-64; by default until focus converges). */
  focusSteps?: number | undefined;
  /** Also append the question and answer to the tree (needs the write scope). */
  remember?: boolean | undefined;
  /**
   * A metadata predicate over the tree's sources ("kind=policy AND version=latest"): focus
   * and citations keep to the sources it admits. Not with `remember`.
   */
  where?: string | undefined;
  /**
   * How focus weighs LensNet, lexical and key matching per partition
   * ("logs: lexical=1; policies: lens=1, keys=0.5"). Not with `remember`.
   */
  prior?: string | undefined;
}

export interface ContextParams {
  /** Focus for this question, as ask does (default: no focusing). */
  question?: string | undefined;
  /** The working context's budget in positions (default: the service's). */
  wMax?: number | undefined;
  /** Refocusing steps for the question (0-64; by default until focus converges). */
  focusSteps?: number | undefined;
  /** Token ranges [start, end) to bring back raw and keep. */
  pins?: [number, number][] | undefined;
  /** Gists [level, index] to open. */
  expand?: [number, number][] | undefined;
  /** Nodes [level, index] whose children to close. */
  collapse?: [number, number][] | undefined;
}

export interface GenerateParams {
  /** Appended to the history before continuing. */
  prompt?: string | undefined;
  /** 0-1024 (the service's default is 64). */
  maxNewTokens?: number | undefined;
  /** Strings that end the generation. */
  stop?: string[] | undefined;
}

export interface AnnotationRange {
  /** The first token (default 0). */
  start?: number | undefined;
  /** One past the last token (default: the end of the history). */
  stop?: number | undefined;
}

export interface AnnotateParams {
  /** 0: any token range [start, stop); 1 or more: exactly the node of that level spanning it. */
  level: number;
  /** The span's first token. */
  start: number;
  /** One past its last token. */
  stop: number;
  /** At most 10000 characters. */
  note: string;
  /** At most 32 (default none). */
  tags?: string[] | undefined;
}

export interface EditAnnotationParams {
  /** The new note, replacing the old one. */
  note: string;
  /** The new tags, replacing the old ones (none when omitted, as in annotate). */
  tags?: string[] | undefined;
}

interface Attempt {
  controller: AbortController;
  /** (Re)start the timeout. */
  arm(): void;
  disarm(): void;
  timedOut(): boolean;
  /** Stop following the caller's signal (when the response is done with). */
  release(): void;
}

interface Send<T> {
  endpoint: EndpointName;
  params?: Record<string, string | number>;
  /** The query string's parameters. */
  query?: Record<string, string | number>;
  body?: unknown;
  /** Raw bytes to send as the body (application/octet-stream) instead of a JSON one. */
  content?: Uint8Array<ArrayBuffer>;
  accept?: string;
  /** Whether a 409 is worth retrying (not when it means "already exists"). */
  retryConflict?: boolean;
  /** Reads a successful response; its errors are retried like the response's. */
  read(response: Response, attempt: Attempt): Promise<T>;
}

const RETRY_AFTER_CAP_MS = 60_000;

export class MegaContextClient {
  readonly baseUrl: string;
  readonly timeoutMs: number;
  readonly maxRetries: number;
  readonly #apiKey: string | undefined;
  readonly #fetch: typeof fetch;

  constructor(options: MegaContextClientOptions) {
    if (!options || typeof options.baseUrl !== "string" || options.baseUrl === "") {
      throw new TypeError("MegaContextClient needs a baseUrl, e.g. http://127.0.0.1:8000");
    }
    this.baseUrl = options.baseUrl.replace(/\/+$/, "").replace(/\/v1$/, "");
    this.#apiKey = options.apiKey;
    this.timeoutMs = options.timeoutMs ?? 60_000;
    this.maxRetries = options.maxRetries ?? 2;
    if (!(this.timeoutMs > 0)) throw new TypeError("timeoutMs must be a positive number");
    if (!Number.isInteger(this.maxRetries) || this.maxRetries < 0) {
      throw new TypeError("maxRetries must be an integer >= 0");
    }
    const found = options.fetch ?? globalThis.fetch;
    if (typeof found !== "function") {
      throw new TypeError("no fetch: use Node 20+ or pass options.fetch");
    }
    this.#fetch = found;
  }

  // ----------------------------------------------------------------------------- service

  /** Liveness: the service is up and its base is loaded (no key needed). */
  health(options?: CallOptions): Promise<Health> {
    return this.#json({ endpoint: "health" }, options);
  }

  /** The caller's trees as OpenAI models (`model` in an OpenAI completion names the tree). */
  models(options?: CallOptions): Promise<ModelList> {
    return this.#json({ endpoint: "models" }, options);
  }

  // ----------------------------------------------------------------------------- trees

  listTrees(options?: CallOptions): Promise<TreeList> {
    return this.#json({ endpoint: "listTrees" }, options);
  }

  /** Create a tree; ConflictError when it exists (never retried: it would exist again). */
  createTree(name: string, options?: CallOptions): Promise<Tree> {
    const body: TreeCreate = { name };
    return this.#json({ endpoint: "createTree", body, retryConflict: false }, options);
  }

  getTree(name: string, options?: CallOptions): Promise<Tree> {
    return this.#json({ endpoint: "getTree", params: { tree: name } }, options);
  }

  async deleteTree(name: string, options?: CallOptions): Promise<void> {
    await this.#json({ endpoint: "deleteTree", params: { tree: name } }, options);
  }

  // ----------------------------------------------------------------------------- sources

  /** Append text to the tree's history (the same content twice is a no-op unless force). */
  ingest(tree: string, params: IngestParams, options?: CallOptions): Promise<Ingested> {
    const body: Ingest = { text: params.text };
    if (params.source !== undefined) body.source = params.source;
    if (params.metadata !== undefined) body.metadata = params.metadata;
    if (params.force !== undefined) body.force = params.force;
    return this.#json({ endpoint: "ingest", params: { tree }, body }, options);
  }

  /**
   * Ingest a file's bytes, in any text encoding (params.encoding, else UTF-8, else detected);
   * `name` is the path citations show. With onProgress, the service reports the tokens
   * appended as it goes (server-sent events) and onProgress is called for each report; the
   * result is the same Ingested. Binary or undecodable bytes: InvalidRequestError.
   */
  async upload(
    tree: string,
    data: UploadData,
    params: UploadParams = {},
    options?: CallOptions,
  ): Promise<Ingested> {
    const problem = uploadProblem(data, params);
    if (problem !== undefined) throw refused(problem);
    const content = await bytesOf(data);
    const query: Record<string, string> = {};
    const name = params.name ?? fileName(data);
    if (name !== undefined) query["name"] = name;
    if (params.source !== undefined) query["source"] = params.source;
    if (params.encoding !== undefined) query["encoding"] = params.encoding;
    if (params.force) query["force"] = "true";
    const onProgress = params.onProgress;
    if (onProgress === undefined) {
      return this.#json({ endpoint: "upload", params: { tree }, query, content }, options);
    }
    query["events"] = "true";
    const opened = await this.#send(
      {
        endpoint: "upload",
        params: { tree },
        query,
        content,
        accept: "text/event-stream",
        read: openEvents,
      },
      options,
    );
    const { events, attempt } = opened;
    let next = opened.first;
    let ingested: Ingested | undefined;
    try {
      while (!next.done) {
        const { event, data } = next.value;
        if (event === "progress") {
          const { tokens, total } = parseData(event, data) as { tokens?: unknown; total?: unknown };
          if (typeof tokens !== "number" || typeof total !== "number") {
            throw badStream("a progress event without tokens and total");
          }
          onProgress(tokens, total);
        } else if (event === "ingested") {
          ingested = parseData(event, data) as Ingested;
          return ingested;
        } else if (event === "error") {
          streamError(next.value);
        }
        next = await nextEvent(events, attempt, options?.signal);
      }
      throw new ConnectionError("the event stream ended before its ingested event", {
        type: "connection_error",
      });
    } finally {
      attempt.disarm();
      attempt.release();
      if (ingested === undefined) attempt.controller.abort();
      await events.return(undefined).catch(() => {});
    }
  }

  listSources(tree: string, options?: CallOptions): Promise<SourceList> {
    return this.#json({ endpoint: "listSources", params: { tree } }, options);
  }

  /** Erase a source: its tokens, the gists above them, its keys and lexical rows. */
  removeSource(tree: string, id: number, options?: CallOptions): Promise<Removed> {
    if (!Number.isInteger(id)) {
      return Promise.reject(refused(`a source id is an integer (listSources), not ${String(id)}`));
    }
    return this.#json({ endpoint: "removeSource", params: { tree, source_id: id } }, options);
  }

  // ----------------------------------------------------------------------------- questions

  /** Answer from the whole history, with citations (the question is kept only with remember). */
  ask(tree: string, params: AskParams, options?: CallOptions): Promise<Answer> {
    const body = askBody(params, false);
    return this.#json({ endpoint: "ask", params: { tree }, body }, options);
  }

  /**
   * Ask, streamed: yields `{type: "text", text}` for each piece as it is decoded, then one
   * `{type: "answer", answer}` with the whole Answer. An error the service reports in the
   * stream is thrown as its typed error. Breaking out of the loop closes the connection.
   */
  async *askStream(
    tree: string,
    params: AskParams,
    options?: CallOptions,
  ): AsyncGenerator<AskStreamEvent, Answer, undefined> {
    const opened = await this.#send(
      {
        endpoint: "ask",
        params: { tree },
        body: askBody(params, true),
        accept: "text/event-stream",
        read: openEvents,
      },
      options,
    );
    const { events, attempt } = opened;
    let next = opened.first;
    let answer: Answer | undefined;
    try {
      while (!next.done) {
        const { event, data } = next.value;
        if (event === "text") {
          const piece = parseData(event, data) as { text?: unknown };
          if (typeof piece.text !== "string") throw badStream(`a text event without text`);
          yield { type: "text", text: piece.text };
        } else if (event === "answer") {
          answer = parseData(event, data) as Answer;
          attempt.disarm();
          yield { type: "answer", answer };
          return answer;
        } else if (event === "error") {
          streamError(next.value);
        }
        next = await nextEvent(events, attempt, options?.signal);
      }
      throw new ConnectionError("the event stream ended before its answer event", {
        type: "connection_error",
      });
    } finally {
      attempt.disarm();
      attempt.release();
      if (answer === undefined) attempt.controller.abort();
      await events.return(undefined).catch(() => {});
    }
  }

  /** Continue the tree's history (after appending prompt); what is generated is kept. */
  generate(tree: string, params: GenerateParams = {}, options?: CallOptions): Promise<Generated> {
    const body: Generate = {};
    if (params.prompt !== undefined) body.prompt = params.prompt;
    if (params.maxNewTokens !== undefined) body.max_new_tokens = params.maxNewTokens;
    if (params.stop !== undefined) body.stop = params.stop;
    return this.#json({ endpoint: "generate", params: { tree }, body }, options);
  }

  // ----------------------------------------------------------------------------- focus

  /**
   * The working context the base would read: at wMax, after the manual edits (collapse, then
   * expand, then pins) and focusing for the question. Nothing is kept between calls.
   */
  context(
    tree: string,
    params: ContextParams = {},
    options?: CallOptions,
  ): Promise<WorkingContext> {
    const problem = focusProblem(params);
    if (problem !== undefined) return Promise.reject(refused(problem));
    const body: FocusRequest = {};
    if (params.question !== undefined) body.question = params.question;
    if (params.wMax !== undefined) body.W_max = params.wMax;
    if (params.focusSteps !== undefined) body.focus_steps = params.focusSteps;
    if (params.pins !== undefined) body.pins = params.pins;
    if (params.expand !== undefined) body.expand = params.expand;
    if (params.collapse !== undefined) body.collapse = params.collapse;
    return this.#json({ endpoint: "context", params: { tree }, body }, options);
  }

  /** Where the tokens [start, stop) come from: source, kind, lines and bytes per span. */
  provenance(
    tree: string,
    start: number,
    stop: number,
    options?: CallOptions,
  ): Promise<ProvenanceList> {
    const query = { start, stop };
    for (const [name, value] of Object.entries(query)) {
      if (!Number.isInteger(value)) {
        const problem = `${name} is an integer (a token position), not ${String(value)}`;
        return Promise.reject(refused(problem));
      }
    }
    return this.#json({ endpoint: "provenance", params: { tree }, query }, options);
  }

  /** The tree's focus traces, oldest first (written by sessions that record their focus). */
  listTraces(tree: string, options?: CallOptions): Promise<TraceList> {
    return this.#json({ endpoint: "listTraces", params: { tree } }, options);
  }

  /** The refocus steps of one trace (a name listTraces gave); NotFoundError for another. */
  getTrace(tree: string, name: string, options?: CallOptions): Promise<Trace> {
    return this.#json({ endpoint: "getTrace", params: { tree, name } }, options);
  }

  // ----------------------------------------------------------------------------- annotations

  /** The notes on spans overlapping tokens [start, stop) (all by default), in order of position. */
  listAnnotations(
    tree: string,
    range: AnnotationRange = {},
    options?: CallOptions,
  ): Promise<Annotation[]> {
    const query: Record<string, number> = {};
    if (range.start !== undefined) query["start"] = range.start;
    if (range.stop !== undefined) query["stop"] = range.stop;
    const problem = annotationProblem(query);
    if (problem !== undefined) return Promise.reject(refused(problem));
    return this.#json({ endpoint: "listAnnotations", params: { tree }, query }, options);
  }

  /**
   * A note on tokens [start, stop): at level 0 any range of the history, at level 1 or more
   * exactly one node of that level (NotFoundError for a span that is not one). Needs the write
   * scope (PermissionDeniedError without it).
   */
  annotate(tree: string, params: AnnotateParams, options?: CallOptions): Promise<Annotation> {
    const { level, start, stop, note, tags } = params;
    const problem = annotationProblem({ level, start, stop }, { note, tags });
    if (problem !== undefined) return Promise.reject(refused(problem));
    const body: AnnotationCreate = { level, start, stop, note, tags: tags ?? [] };
    return this.#json({ endpoint: "annotate", params: { tree }, body }, options);
  }

  /**
   * Replace a note's text and tags; the result is at the next version. ConflictError with type
   * "version_conflict" (never retried) when someone changed the note since `annotation` was
   * read: read it again (listAnnotations) and apply the edit to that.
   */
  editAnnotation(
    tree: string,
    annotation: Annotation,
    params: EditAnnotationParams,
    options?: CallOptions,
  ): Promise<Annotation> {
    const { note, tags } = params;
    const problem = heldProblem(annotation) ?? annotationProblem({}, { note, tags });
    if (problem !== undefined) return Promise.reject(refused(problem));
    const body: AnnotationEdit = { version: annotation.version, note, tags: tags ?? [] };
    const path = { tree, annotation_id: annotation.id };
    return this.#json({ endpoint: "editAnnotation", params: path, body }, options);
  }

  /**
   * Delete a note (its history stays), if nobody changed it since `annotation` was read;
   * ConflictError "version_conflict" if someone did.
   */
  async deleteAnnotation(
    tree: string,
    annotation: Annotation,
    options?: CallOptions,
  ): Promise<void> {
    const problem = heldProblem(annotation);
    if (problem !== undefined) throw refused(problem);
    const path = { tree, annotation_id: annotation.id };
    const query = { version: annotation.version };
    await this.#json({ endpoint: "deleteAnnotation", params: path, query }, options);
  }

  /** Every change of a note, oldest first, also once it is deleted: action, version, who, when. */
  annotationHistory(
    tree: string,
    annotationId: number,
    options?: CallOptions,
  ): Promise<AnnotationChange[]> {
    const problem = annotationProblem({ annotationId });
    if (problem !== undefined) return Promise.reject(refused(problem));
    const path = { tree, annotation_id: annotationId };
    return this.#json({ endpoint: "annotationHistory", params: path }, options);
  }

  // ----------------------------------------------------------------------------- transport

  #json<T>(request: Omit<Send<T>, "read">, options?: CallOptions): Promise<T> {
    return this.#send<T>(
      {
        ...request,
        read: async (response, attempt) => {
          const text = await response.text();
          attempt.disarm();
          attempt.release();
          if (response.status === 204 || text === "") return undefined as T;
          try {
            return JSON.parse(text) as T;
          } catch {
            throw new MegaContextError(
              `the service's response is not JSON: ${text.slice(0, 200)}`,
              { status: response.status, type: "invalid_response" },
            );
          }
        },
      },
      options,
    );
  }

  #url(
    endpoint: EndpointName,
    params: Record<string, string | number> = {},
    query?: Record<string, string | number>,
  ): string {
    const path = ENDPOINTS[endpoint][1].replace(/\{(\w+)\}/g, (_, name: string) => {
      const value = String(params[name] ?? "");
      // "." and ".." (even percent-encoded) are resolved away by URL parsing: never send them.
      if (value === "" || value === "." || value === "..") {
        throw refused(`${name} ${JSON.stringify(value)} is not a valid name`);
      }
      return encodeURIComponent(value);
    });
    if (query === undefined) return this.baseUrl + path;
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) search.set(name, String(value));
    return `${this.baseUrl}${path}?${search.toString()}`;
  }

  async #send<T>(request: Send<T>, options: CallOptions = {}): Promise<T> {
    const method = ENDPOINTS[request.endpoint][0];
    const url = this.#url(request.endpoint, request.params, request.query);
    const headers: Record<string, string> = { accept: request.accept ?? "application/json" };
    if (this.#apiKey !== undefined) headers["authorization"] = `Bearer ${this.#apiKey}`;
    // One key per call, the same on its retries: a service that keeps Idempotency-Keys answers
    // a retried POST whose first try did go through with the first response, not a second run.
    if (method === "POST") headers["idempotency-key"] = newIdempotencyKey();
    let payload: string | Uint8Array<ArrayBuffer> | undefined;
    if (request.content !== undefined) {
      headers["content-type"] = "application/octet-stream";
      payload = request.content;
    } else if (request.body !== undefined) {
      headers["content-type"] = "application/json";
      payload = JSON.stringify(request.body);
    }
    const maxRetries = options.maxRetries ?? this.maxRetries;
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const signal = options.signal;

    for (let tries = 0; ; tries++) {
      signal?.throwIfAborted();
      const attempt = newAttempt(timeoutMs, signal);
      try {
        attempt.arm();
        const response = await this.#fetch(url, {
          method,
          headers,
          ...(payload === undefined ? {} : { body: payload }),
          signal: attempt.controller.signal,
        });
        if (!response.ok) {
          const text = await response.text();
          attempt.disarm();
          let parsed: unknown;
          try {
            parsed = JSON.parse(text);
          } catch {
            parsed = undefined;
          }
          const retryAfter = parseRetryAfter(response.headers.get("retry-after"));
          throw errorFromResponse(response.status, parsed, text, retryAfter);
        }
        return await request.read(response, attempt);
      } catch (caught) {
        attempt.disarm();
        attempt.release();
        attempt.controller.abort(); // drop what is left of this response
        if (signal?.aborted) throw signal.reason;
        const error = asClientError(caught, attempt, timeoutMs);
        if (tries >= maxRetries || !retryable(error, request.retryConflict ?? true)) throw error;
        await sleep(retryDelay(error, tries), signal);
      }
    }
  }
}

// ----------------------------------------------------------------------------- helpers

function newIdempotencyKey(): string {
  const random = globalThis.crypto?.randomUUID;
  if (typeof random === "function") return random.call(globalThis.crypto);
  return Array.from({ length: 32 }, () => Math.floor(Math.random() * 16).toString(16)).join("");
}

/** An error found here, before any request (its status is undefined). */
function refused(message: string): InvalidRequestError {
  return new InvalidRequestError(message, { type: "invalid_request" });
}

/** What is wrong with context()'s integers, if anything. */
function focusProblem(params: ContextParams): string | undefined {
  for (const [name, value] of [
    ["wMax", params.wMax],
    ["focusSteps", params.focusSteps],
  ] as const) {
    if (value !== undefined && !Number.isInteger(value)) {
      return `${name} is an integer, not ${String(value)}`;
    }
  }
  for (const [name, shape] of [
    ["pins", "[start, end]"],
    ["expand", "[level, index]"],
    ["collapse", "[level, index]"],
  ] as const) {
    const pairs: unknown = params[name];
    if (pairs === undefined) continue;
    if (!Array.isArray(pairs)) return `${name} is a list of ${shape} pairs, not ${String(pairs)}`;
    for (const [i, pair] of pairs.entries()) {
      if (!Array.isArray(pair) || pair.length !== 2 || !pair.every(Number.isInteger)) {
        const shown = Array.isArray(pair) ? `[${pair.map(String).join(", ")}]` : String(pair);
        return `${name}[${i}] is two integers ${shape}, not ${shown}`;
      }
    }
  }
  return undefined;
}

/**
 * What is wrong with an annotation call's input, if anything: integers where the service
 * takes integers, a string note, a list of string tags.
 */
function annotationProblem(
  integers: Record<string, unknown>,
  text?: { note: unknown; tags: unknown },
): string | undefined {
  for (const [name, value] of Object.entries(integers)) {
    if (!Number.isInteger(value)) return `${name} is an integer, not ${describeValue(value)}`;
  }
  if (text === undefined) return undefined;
  const { note, tags } = text;
  if (typeof note !== "string") return `note is a string, not ${describeValue(note)}`;
  if (tags === undefined) return undefined;
  if (!Array.isArray(tags)) return `tags is a list of strings, not ${describeValue(tags)}`;
  for (const [i, tag] of tags.entries()) {
    if (typeof tag !== "string") return `tags[${i}] is a string, not ${describeValue(tag)}`;
  }
  return undefined;
}

/** What is wrong with the Annotation given to edit or delete, if anything. */
function heldProblem(annotation: unknown): string | undefined {
  const held = typeof annotation === "object" && annotation !== null ? annotation : {};
  const { id, version } = held as Partial<Annotation>;
  if (Number.isInteger(id) && Number.isInteger(version)) return undefined;
  return (
    "annotation is an Annotation as listAnnotations, annotate or editAnnotation returned it " +
    `(an integer id and version), not one with id ${String(id)} and version ${String(version)}`
  );
}

/** What is wrong with upload()'s data and encoding, if anything. */
function uploadProblem(data: unknown, params: UploadParams): string | undefined {
  const bytes =
    data instanceof Uint8Array ||
    data instanceof ArrayBuffer ||
    (typeof Blob !== "undefined" && data instanceof Blob);
  if (!bytes && typeof data !== "string") {
    return `upload takes a Uint8Array, ArrayBuffer, Blob or string, not ${describeValue(data)}`;
  }
  const encoding = params.encoding;
  if (typeof data === "string" && encoding !== undefined && !/^utf-?8$/i.test(encoding)) {
    return `a string is sent as UTF-8, not ${encoding}: upload its bytes in ${encoding} instead`;
  }
  return undefined;
}

function describeValue(value: unknown): string {
  if (value === null || typeof value !== "object") return String(value);
  return value.constructor?.name ?? "an object";
}

/** The bytes of upload()'s data, copied (the caller may change theirs while it retries). */
async function bytesOf(data: UploadData): Promise<Uint8Array<ArrayBuffer>> {
  if (typeof data === "string") return copy(new TextEncoder().encode(data));
  if (data instanceof Uint8Array) return copy(data);
  if (data instanceof ArrayBuffer) return copy(new Uint8Array(data));
  return new Uint8Array(await data.arrayBuffer());
}

function copy(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  const copied = new Uint8Array(bytes.byteLength);
  copied.set(bytes);
  return copied;
}

/** A File's name (a File is a Blob with a name). */
function fileName(data: UploadData): string | undefined {
  if (typeof File !== "undefined" && data instanceof File && data.name !== "") return data.name;
  return undefined;
}

/**
 * Opens a response's event stream and reads its first event: an error the service meets once
 * the stream has begun (e.g. another request writing the tree) comes as an error event, and
 * one before anything is passed on is thrown here, so that it is retried as the same HTTP
 * error would be.
 */
async function openEvents(response: Response, attempt: Attempt) {
  if (response.body === null) {
    throw new ConnectionError("the service sent no event stream", {
      type: "connection_error",
    });
  }
  const events = parseEventStream(response.body, attempt.arm);
  const first = await events.next();
  if (!first.done && first.value.event === "error") streamError(first.value);
  return { events, first, attempt };
}

function askBody(params: AskParams, stream: boolean): Ask {
  const body: Ask = { question: params.question };
  if (params.maxNewTokens !== undefined) body.max_new_tokens = params.maxNewTokens;
  if (params.focusSteps !== undefined) body.focus_steps = params.focusSteps;
  if (params.remember !== undefined) body.remember = params.remember;
  if (params.where !== undefined) body.where = params.where;
  if (params.prior !== undefined) body.prior = params.prior;
  if (stream) body.stream = true;
  return body;
}

function newAttempt(timeoutMs: number, signal: AbortSignal | undefined): Attempt {
  const controller = new AbortController();
  let timer: ReturnType<typeof setTimeout> | undefined;
  let expired = false;
  const onAbort = () => controller.abort(signal?.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  return {
    controller,
    arm() {
      clearTimeout(timer);
      timer = setTimeout(() => {
        expired = true;
        controller.abort();
      }, timeoutMs);
    },
    disarm() {
      clearTimeout(timer);
    },
    timedOut: () => expired,
    release() {
      signal?.removeEventListener("abort", onAbort);
    },
  };
}

async function nextEvent(
  events: AsyncGenerator<ServerSentEvent, void, undefined>,
  attempt: Attempt,
  signal: AbortSignal | undefined,
): Promise<IteratorResult<ServerSentEvent, void>> {
  try {
    return await events.next();
  } catch (caught) {
    attempt.disarm();
    if (signal?.aborted) throw signal.reason;
    throw asClientError(caught, attempt, undefined);
  }
}

function asClientError(
  caught: unknown,
  attempt: Attempt,
  timeoutMs: number | undefined,
): MegaContextError {
  if (caught instanceof MegaContextError) return caught;
  if (attempt.timedOut()) {
    const after = timeoutMs === undefined ? "" : ` after ${timeoutMs} ms`;
    return new TimeoutError(`the service did not answer${after}`, {
      type: "timeout",
      cause: caught,
    });
  }
  const reason = caught instanceof Error ? describe(caught) : String(caught);
  return new ConnectionError(`could not reach the service: ${reason}`, {
    type: "connection_error",
    cause: caught,
  });
}

function describe(error: Error): string {
  const cause = (error as { cause?: unknown }).cause;
  if (cause instanceof Error && cause.message) return `${error.message} (${cause.message})`;
  return error.message;
}

function retryable(error: MegaContextError, retryConflict: boolean): boolean {
  if (error instanceof ConnectionError || error instanceof TimeoutError) return true;
  const status = error.status;
  if (status === undefined) return false;
  // A 409 "conflict" is transient (another request is writing the tree); "already_exists"
  // and an annotation's "version_conflict" will not change by asking again.
  if (status === 409) return retryConflict && error.type === "conflict";
  return status === 408 || status === 429 || status >= 500;
}

/** Retry-After when the service sent a usable one, else exponential backoff with jitter. */
function retryDelay(error: MegaContextError, tries: number): number {
  const asked = error.retryAfter;
  if (asked !== undefined && asked * 1000 <= RETRY_AFTER_CAP_MS) return asked * 1000;
  const ceiling = Math.min(8_000, 500 * 2 ** tries);
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

/** `Retry-After`: seconds, or an HTTP date; undefined when absent or unreadable. */
export function parseRetryAfter(value: string | null): number | undefined {
  if (value === null) return undefined;
  const text = value.trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
  const when = Date.parse(text);
  if (Number.isNaN(when)) return undefined;
  return Math.max(0, (when - Date.now()) / 1000);
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const done = () => {
      signal?.removeEventListener("abort", stop);
      resolve();
    };
    const timer = setTimeout(done, ms);
    const stop = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", stop, { once: true });
  });
}

function parseData(event: string, data: string): unknown {
  try {
    return JSON.parse(data);
  } catch {
    throw badStream(`the data of a ${event} event is not JSON: ${data.slice(0, 200)}`);
  }
}

function badStream(message: string): MegaContextError {
  return new MegaContextError(message, { status: 200, type: "invalid_response" });
}

/** Throws the typed error of an `error` event ({"error": {"type", "message", "code"}}). */
function streamError(event: ServerSentEvent): never {
  const payload = parseData("error", event.data) as { error?: { code?: unknown } };
  const code = payload?.error?.code;
  const status = typeof code === "number" && code >= 400 ? code : 500;
  throw errorFromResponse(status, payload, event.data);
}
