/** The event-stream parser on its own. */

import { describe, expect, it } from "vitest";
import { parseEventStream, type ServerSentEvent } from "../src/index.js";

function streamOf(chunks: (string | Uint8Array)[]): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) {
        controller.enqueue(typeof chunk === "string" ? encoder.encode(chunk) : chunk);
      }
      controller.close();
    },
  });
}

async function parse(chunks: (string | Uint8Array)[]): Promise<ServerSentEvent[]> {
  const seen: ServerSentEvent[] = [];
  for await (const e of parseEventStream(streamOf(chunks))) seen.push(e);
  return seen;
}

describe("parseEventStream", () => {
  it("reads named events, multi-line data, comments and unnamed events", async () => {
    expect(
      await parse([
        ": hello\n",
        'event: text\ndata: {"a":\ndata: 1}\n\n',
        "data:plain\nid: 3\nretry: 10\n\n",
      ]),
    ).toEqual([
      { event: "text", data: '{"a":\n1}' },
      { event: "message", data: "plain" },
    ]);
  });

  it("handles CRLF and CR line ends split across chunks, and a BOM", async () => {
    expect(await parse(["\ufeffevent: a\r", "\ndata: 1\r", "\r", "event: b\rdata: 2\r\r"])).toEqual(
      [
        { event: "a", data: "1" },
        { event: "b", data: "2" },
      ],
    );
  });

  it("decodes UTF-8 split inside a character", async () => {
    const bytes = new TextEncoder().encode('data: {"text": "né ✓"}\n\n');
    const cut = bytes.indexOf(0xe2) + 1; // inside the check mark's three bytes
    expect(await parse([bytes.slice(0, cut), bytes.slice(cut)])).toEqual([
      { event: "message", data: '{"text": "né ✓"}' },
    ]);
  });

  it("drops an event the stream does not finish, and blank events", async () => {
    expect(await parse(["event: x\n\n", "data: 1\n\n", "data: 2\n"])).toEqual([
      { event: "message", data: "1" },
    ]);
  });
});
