/**
 * The SDK against the committed OpenAPI document (docs/openapi.json): every route it calls
 * exists there, and every type named after a schema has the schema's fields.
 */

import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { ENDPOINTS, type EndpointName, SCHEMA_FIELDS } from "../src/index.js";

interface OpenAPI {
  paths: Record<string, Record<string, unknown>>;
  components: { schemas: Record<string, { properties?: Record<string, unknown> }> };
}

const document = JSON.parse(
  readFileSync(new URL("../../../docs/openapi.json", import.meta.url), "utf8"),
) as OpenAPI;
const schemas = document.components.schemas;

// What each method sends and returns (as its signature declares).
const REQUEST_BODIES: Partial<Record<EndpointName, string>> = {
  createTree: "TreeCreate",
  ingest: "Ingest",
  ask: "Ask",
  context: "FocusRequest",
  generate: "Generate",
  annotate: "AnnotationCreate",
  editAnnotation: "AnnotationEdit",
};
const RESPONSES: Partial<Record<EndpointName, string>> = {
  listTrees: "TreeList",
  createTree: "Tree",
  getTree: "Tree",
  ingest: "Ingested",
  upload: "Ingested",
  listSources: "SourceList",
  removeSource: "Removed",
  ask: "Answer",
  context: "WorkingContext",
  provenance: "ProvenanceList",
  listTraces: "TraceList",
  getTrace: "Trace",
  generate: "Generated",
  annotate: "Annotation",
  editAnnotation: "Annotation",
};
// What each method returns as a JSON array of one schema.
const ARRAY_RESPONSES: Partial<Record<EndpointName, string>> = {
  listAnnotations: "Annotation",
};
// The methods that resolve with nothing: the route answers 204, no body.
const EMPTY_RESPONSES: EndpointName[] = ["deleteAnnotation"];
// The query parameters each method sends.
const QUERIES: Partial<Record<EndpointName, string[]>> = {
  provenance: ["start", "stop"],
  listAnnotations: ["start", "stop"],
  deleteAnnotation: ["version"],
  // retry.test.ts checks that upload sends exactly these.
  upload: ["name", "source", "encoding", "force", "events"],
};
// What each method sends as raw bytes (instead of a JSON body).
const RAW_BODIES: Partial<Record<EndpointName, string>> = {
  upload: "application/octet-stream",
};

interface Schema {
  $ref?: string;
  type?: string;
  items?: Schema;
}

interface Operation {
  parameters?: { name: string; in: string; required?: boolean }[];
  requestBody?: { content: Record<string, { schema?: Schema }> };
  responses: Record<string, { content?: Record<string, { schema?: Schema }> }>;
}

function operation(name: EndpointName): Operation {
  const [method, path] = ENDPOINTS[name];
  return document.paths[path]![method.toLowerCase()] as Operation;
}

describe("drift against docs/openapi.json", () => {
  it.each(Object.entries(ENDPOINTS))("%s: the route exists", (_, [method, path]) => {
    expect(Object.keys(document.paths)).toContain(path);
    expect(Object.keys(document.paths[path]!)).toContain(method.toLowerCase());
  });

  it.each(Object.keys(SCHEMA_FIELDS))("%s: the fields are the schema's properties", (name) => {
    const schema = schemas[name];
    expect(schema, `no schema ${name} in docs/openapi.json`).toBeDefined();
    const documented = Object.keys(schema!.properties ?? {}).sort();
    const ours = [...SCHEMA_FIELDS[name as keyof typeof SCHEMA_FIELDS]].sort();
    expect(ours).toEqual(documented);
  });

  it.each(Object.entries(REQUEST_BODIES))("%s: sends %s", (name, schema) => {
    const body = operation(name as EndpointName).requestBody;
    expect(body?.content["application/json"]?.schema?.$ref).toBe(`#/components/schemas/${schema}`);
  });

  it.each(Object.entries(RAW_BODIES))("%s: sends %s", (name, media) => {
    const body = operation(name as EndpointName).requestBody;
    expect(Object.keys(body?.content ?? {})).toEqual([media]);
  });

  it.each(Object.entries(RESPONSES))("%s: returns %s", (name, schema) => {
    const { responses } = operation(name as EndpointName);
    const ok = responses["200"] ?? responses["201"];
    expect(ok?.content?.["application/json"]?.schema?.$ref).toBe(`#/components/schemas/${schema}`);
  });

  it.each(Object.entries(ARRAY_RESPONSES))("%s: returns a list of %s", (name, schema) => {
    const { responses } = operation(name as EndpointName);
    const listed = responses["200"]?.content?.["application/json"]?.schema;
    expect(listed?.type).toBe("array");
    expect(listed?.items?.$ref).toBe(`#/components/schemas/${schema}`);
  });

  it.each(EMPTY_RESPONSES)("%s: answers 204 without a body", (name) => {
    const { responses } = operation(name);
    expect(responses["204"]).toBeDefined();
    expect(responses["204"]?.content).toBeUndefined();
  });

  it.each(Object.entries(QUERIES))("%s: sends the query parameters %j", (name, sent) => {
    const parameters = operation(name as EndpointName).parameters ?? [];
    const documented = parameters.filter((p) => p.in === "query");
    expect([...sent].sort()).toEqual(documented.map((p) => p.name).sort());
  });
});
