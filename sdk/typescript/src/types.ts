/**
 * Request and response bodies of the MegaContext service, named after the schemas of its
 * OpenAPI document (docs/openapi.json). Field names are the wire names (snake_case); the
 * client's methods take camelCase options and build these bodies.
 */

/** `GET /v1/health`. */
export interface Health {
  status: string;
  version: string;
  base: string;
}

/** The body of `POST /v1/trees`. */
export interface TreeCreate {
  /** 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit. */
  name: string;
}

export interface Tree {
  name: string;
  tokens: number;
  levels: number;
  sources: number;
}

export interface TreeList {
  trees: Tree[];
}

/** The body of `POST /v1/trees/{tree}/sources`. */
export interface Ingest {
  /** The text to append to the tree's history. */
  text: string;
  /** A URI naming the source (default: an inline: URI of its hash). */
  source?: string | null;
  /** JSON metadata; "path" names the source in citations. */
  metadata?: Record<string, unknown> | null;
  /** Append even when the same content is already in. */
  force?: boolean;
}

export interface Ingested {
  /** Tokens appended (0 when the content was already in). */
  tokens: number;
  start: number;
  stop: number;
  duplicate_of: string | null;
}

export interface Source {
  /** The journal id (what removeSource takes). */
  id: number;
  /** The source's path or URI. */
  source: string;
  kind: string;
  start: number;
  stop: number;
  tokens: number;
}

export interface SourceList {
  sources: Source[];
}

export interface Removed {
  removed_tokens: number;
}

/** The body of `POST /v1/trees/{tree}/ask`. */
export interface Ask {
  question: string;
  /** 1-1024 (server default 64). */
  max_new_tokens?: number;
  /** 0-64 (server default: until focus converges). */
  focus_steps?: number | null;
  /** Also append the question and answer to the tree (needs the write scope). */
  remember?: boolean;
  /** Answer as server-sent events (use askStream). */
  stream?: boolean;
  /** A metadata predicate over the tree's sources, e.g. "kind=policy AND version=latest". */
  where?: string | null;
  /** How focus weighs LensNet, lexical and key matching per partition. */
  prior?: string | null;
}

export interface Citation {
  source: string | null;
  lines: [number, number] | null;
  tokens: [number, number];
  score: number;
  text: string;
  label: string;
  /** Asked with `where` or `prior`: whether the cited source is its document's latest version. */
  latest?: boolean | null;
}

export interface Usage {
  /** Positions the base read: prompt, working context, question. */
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface Answer {
  answer: string;
  citations: Citation[];
  spans: [number, number][];
  focus_steps: number;
  usage: Usage;
  seconds: Record<string, number>;
}

/** The body of `POST /v1/trees/{tree}/context` (nothing is kept between requests). */
export interface FocusRequest {
  /** Focus for this question, as ask does. */
  question?: string | null;
  /** The budget, >= 1 (default: the service's). */
  W_max?: number | null;
  /** 0-64 (server default: until focus converges). */
  focus_steps?: number | null;
  /** Token ranges [start, end) to bring back raw and keep (at most 64). */
  pins?: [number, number][];
  /** Gists [level, index] to open (at most 64). */
  expand?: [number, number][];
  /** Nodes [level, index] whose children to close (at most 64). */
  collapse?: [number, number][];
}

export interface ContextEntry {
  /** 0: raw tokens (a run of them); 1+: one gist. */
  level: number;
  /** The node's index on its level (a run's first token). */
  index: number;
  /** First token of the history the entry covers. */
  start: number;
  /** One past its last token. */
  end: number;
  /** Positions the entry takes in the working context. */
  entries: number;
  /** The raw text (empty for a gist). */
  text: string;
}

export interface WorkingContext {
  W_max: number;
  /** Positions used. */
  size: number;
  /** Oldest first; raw tokens merged into runs. */
  entries: ContextEntry[];
  focus_steps: number;
}

export interface ProvenanceSpan {
  /** The source's path or URI. */
  source: string;
  kind: string;
  start: number;
  stop: number;
  lines: [number, number] | null;
  bytes: [number, number] | null;
}

/** `GET /v1/trees/{tree}/provenance`. */
export interface ProvenanceList {
  spans: ProvenanceSpan[];
}

/** One focus trace of a tree (written by sessions that record their refocusing). */
export interface TraceFile {
  /** The file's name, `session-*.jsonl` (what getTrace takes). */
  name: string;
  /** Refocus steps recorded. */
  steps: number;
  /** The file's size. */
  bytes: number;
}

/** `GET /v1/trees/{tree}/traces`: oldest first. */
export interface TraceList {
  traces: TraceFile[];
}

/** `GET /v1/trees/{tree}/traces/{name}`. */
export interface Trace {
  name: string;
  /** One record per refocus step. */
  steps: Record<string, unknown>[];
}

/** The body of `POST /v1/trees/{tree}/generate`. */
export interface Generate {
  /** Appended to the history before continuing. */
  prompt?: string | null;
  /** 0-1024 (server default 64). */
  max_new_tokens?: number;
  stop?: string[];
}

export interface Generated {
  text: string;
  tokens: number;
}

/** A note on a span of a tree, as stored; `version` is what an edit or delete must name. */
export interface Annotation {
  id: number;
  /** 0: any token range; 1 or more: exactly one node of that level. */
  level: number;
  /** The span's first token. */
  start: number;
  /** One past its last token. */
  stop: number;
  note: string;
  tags: string[];
  /** 1 when created, one more at each edit. */
  version: number;
  /** Who created it: `tenant/key id`. */
  created_by: string;
  /** ISO 8601, UTC. */
  created_at: string;
  /** Who changed it last: `tenant/key id`. */
  updated_by: string;
  updated_at: string;
}

/** The body of `POST /v1/trees/{tree}/explorer/annotations`. */
export interface AnnotationCreate {
  /** 0-64. 0: any token range; 1 or more: exactly one node of that level. */
  level: number;
  /** The first token of the span. */
  start: number;
  /** One past its last token. */
  stop: number;
  /** At most 10000 characters. */
  note: string;
  /** At most 32 (server default: none). */
  tags?: string[];
}

/** The body of `PATCH /v1/trees/{tree}/explorer/annotations/{annotation_id}`. */
export interface AnnotationEdit {
  /** The version edited (a stale one is a 409 version_conflict). */
  version: number;
  note: string;
  /** The new tags, replacing the old ones (server default: none). */
  tags?: string[];
}

/** One change of an annotation (`GET …/annotations/{annotation_id}/history`), oldest first. */
export interface AnnotationChange {
  action: "create" | "edit" | "delete";
  /** The version the change made. */
  version: number;
  /** The note and tags after the change (a delete keeps the last ones). */
  note: string;
  tags: string[];
  /** Who made it: `tenant/key id`. */
  actor: string;
  /** When: ISO 8601, UTC. */
  at: string;
}

export interface ErrorBody {
  /** The error's class, e.g. not_found, invalid_request. */
  type: string;
  /** What was wrong and what to do. */
  message: string;
  /** The HTTP status. */
  code: number;
}

/** Every error the service returns has this body. */
export interface ErrorResponse {
  error: ErrorBody;
}

/** One tree as an OpenAI model (`GET /v1/models`). */
export interface Model {
  id: string;
  object: "model";
  created: number;
  owned_by: string;
}

export interface ModelList {
  object: "list";
  data: Model[];
}

/** What askStream yields: the answer's pieces as they are decoded, then the whole answer. */
export type AskStreamEvent = { type: "text"; text: string } | { type: "answer"; answer: Answer };

/**
 * The fields of every type above that is named after a schema of the service, in the
 * schema's order. A test compares them with docs/openapi.json; the compile-time check below
 * keeps them equal to the interfaces.
 */
export const SCHEMA_FIELDS = {
  TreeCreate: ["name"],
  Tree: ["name", "tokens", "levels", "sources"],
  TreeList: ["trees"],
  Ingest: ["text", "source", "metadata", "force"],
  Ingested: ["tokens", "start", "stop", "duplicate_of"],
  Source: ["id", "source", "kind", "start", "stop", "tokens"],
  SourceList: ["sources"],
  Removed: ["removed_tokens"],
  Ask: ["question", "max_new_tokens", "focus_steps", "remember", "stream", "where", "prior"],
  Citation: ["source", "lines", "tokens", "score", "text", "label", "latest"],
  Usage: ["prompt_tokens", "completion_tokens", "total_tokens"],
  Answer: ["answer", "citations", "spans", "focus_steps", "usage", "seconds"],
  FocusRequest: ["question", "W_max", "focus_steps", "pins", "expand", "collapse"],
  ContextEntry: ["level", "index", "start", "end", "entries", "text"],
  WorkingContext: ["W_max", "size", "entries", "focus_steps"],
  ProvenanceSpan: ["source", "kind", "start", "stop", "lines", "bytes"],
  ProvenanceList: ["spans"],
  TraceFile: ["name", "steps", "bytes"],
  TraceList: ["traces"],
  Trace: ["name", "steps"],
  Generate: ["prompt", "max_new_tokens", "stop"],
  Generated: ["text", "tokens"],
  Annotation: [
    "id",
    "level",
    "start",
    "stop",
    "note",
    "tags",
    "version",
    "created_by",
    "created_at",
    "updated_by",
    "updated_at",
  ],
  AnnotationCreate: ["level", "start", "stop", "note", "tags"],
  AnnotationEdit: ["version", "note", "tags"],
  ErrorBody: ["type", "message", "code"],
  ErrorResponse: ["error"],
} as const;

export type SchemaName = keyof typeof SCHEMA_FIELDS;

interface SchemaTypes {
  TreeCreate: TreeCreate;
  Tree: Tree;
  TreeList: TreeList;
  Ingest: Ingest;
  Ingested: Ingested;
  Source: Source;
  SourceList: SourceList;
  Removed: Removed;
  Ask: Ask;
  Citation: Citation;
  Usage: Usage;
  Answer: Answer;
  FocusRequest: FocusRequest;
  ContextEntry: ContextEntry;
  WorkingContext: WorkingContext;
  ProvenanceSpan: ProvenanceSpan;
  ProvenanceList: ProvenanceList;
  TraceFile: TraceFile;
  TraceList: TraceList;
  Trace: Trace;
  Generate: Generate;
  Generated: Generated;
  Annotation: Annotation;
  AnnotationCreate: AnnotationCreate;
  AnnotationEdit: AnnotationEdit;
  ErrorBody: ErrorBody;
  ErrorResponse: ErrorResponse;
}

type SameKeys<T, K extends readonly PropertyKey[]> = [keyof T] extends [K[number]]
  ? [K[number]] extends [keyof T]
    ? true
    : false
  : false;

// Compile-time: `true` is not assignable where an interface and its SCHEMA_FIELDS differ.
const fieldsMatch: { [N in SchemaName]: SameKeys<SchemaTypes[N], (typeof SCHEMA_FIELDS)[N]> } = {
  TreeCreate: true,
  Tree: true,
  TreeList: true,
  Ingest: true,
  Ingested: true,
  Source: true,
  SourceList: true,
  Removed: true,
  Ask: true,
  Citation: true,
  Usage: true,
  Answer: true,
  FocusRequest: true,
  ContextEntry: true,
  WorkingContext: true,
  ProvenanceSpan: true,
  ProvenanceList: true,
  TraceFile: true,
  TraceList: true,
  Trace: true,
  Generate: true,
  Generated: true,
  Annotation: true,
  AnnotationCreate: true,
  AnnotationEdit: true,
  ErrorBody: true,
  ErrorResponse: true,
};
void fieldsMatch;
