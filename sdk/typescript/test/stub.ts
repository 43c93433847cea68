/** A tiny node:http server whose answers a test scripts, recording every request. */

import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export interface Recorded {
  method: string;
  url: string;
  headers: IncomingMessage["headers"];
  body: string;
  /** The body's bytes, as sent. */
  bytes: Buffer;
}

export type Handler = (
  request: Recorded,
  response: ServerResponse,
  index: number,
) => void | Promise<void>;

export interface Stub {
  url: string;
  requests: Recorded[];
  close(): Promise<void>;
}

export async function startStub(handler: Handler): Promise<Stub> {
  const requests: Recorded[] = [];
  const server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const bytes = Buffer.concat(chunks);
    const recorded: Recorded = {
      method: req.method ?? "",
      url: req.url ?? "",
      headers: req.headers,
      body: bytes.toString("utf8"),
      bytes,
    };
    requests.push(recorded);
    await handler(recorded, res, requests.length - 1);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export function json(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(JSON.stringify(body));
}

export function error(
  res: ServerResponse,
  status: number,
  type: string,
  headers: Record<string, string> = {},
): void {
  json(res, status, { error: { type, message: `stub says ${type}`, code: status } }, headers);
}

export const ANSWER = {
  answer: " 42",
  citations: [],
  spans: [],
  focus_steps: 0,
  usage: { prompt_tokens: 10, completion_tokens: 2, total_tokens: 12 },
  seconds: { decode: 0.01 },
};

export function event(name: string, data: unknown): string {
  return `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`;
}
