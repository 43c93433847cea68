/**
 * Starts a live MegaContext service for the tests: a temporary root, three keys (tenant "t"
 * read,write; tenant "t" read-only; tenant "other" read,write), `megacontext serve` on a free
 * loopback port. The binary is ../../.venv/bin/megacontext (the repository's venv) unless
 * MEGACONTEXT_BIN names another.
 */

import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import type { TestProject } from "vitest/node";

export interface LiveService {
  baseUrl: string;
  keys: { readWrite: string; readOnly: string; other: string };
}

declare module "vitest" {
  export interface ProvidedContext {
    live: LiveService;
  }
}

const HEALTH_TIMEOUT_MS = 120_000;
const BIN =
  process.env.MEGACONTEXT_BIN ??
  fileURLToPath(new URL("../../../.venv/bin/megacontext", import.meta.url));

const run = promisify(execFile);

async function createKey(root: string, tenant: string, scopes: string): Promise<string> {
  const { stdout } = await run(BIN, [
    "keys",
    "create",
    "--root",
    root,
    "--tenant",
    tenant,
    "--scopes",
    scopes,
  ]);
  const key = stdout.trim().split("\n").pop()?.trim() ?? "";
  if (!/^mck_[0-9a-f]{12}_\S+$/.test(key)) {
    throw new Error(`megacontext keys create printed no key:\n${stdout}`);
  }
  return key;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.unref();
    probe.on("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      const port = typeof address === "object" && address ? address.port : 0;
      probe.close(() => resolve(port));
    });
  });
}

async function waitHealthy(
  baseUrl: string,
  server: ChildProcess,
  log: () => string,
): Promise<void> {
  const deadline = Date.now() + HEALTH_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (server.exitCode !== null || server.signalCode !== null) {
      throw new Error(
        `megacontext serve exited (${server.exitCode ?? server.signalCode}):\n${log()}`,
      );
    }
    try {
      const response = await fetch(`${baseUrl}/v1/health`, { signal: AbortSignal.timeout(2_000) });
      if (response.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(
    `megacontext serve was not healthy within ${HEALTH_TIMEOUT_MS / 1000} s:\n${log()}`,
  );
}

function stop(server: ChildProcess): Promise<void> {
  if (server.exitCode !== null || server.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const force = setTimeout(() => server.kill("SIGKILL"), 10_000);
    server.once("exit", () => {
      clearTimeout(force);
      resolve();
    });
    server.kill("SIGTERM");
  });
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const root = await mkdtemp(join(tmpdir(), "megacontext-sdk-ts-"));
  let server: ChildProcess | undefined;
  try {
    // The first key creates keys.sqlite; the others are made while the server loads its models.
    const readWrite = await createKey(root, "t", "read,write");
    const port = await freePort();
    const baseUrl = `http://127.0.0.1:${port}`;
    let output = "";
    server = spawn(BIN, ["serve", "--root", root, "--port", String(port), "--w-max", "256"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    const started = server;
    server.stdout?.on("data", (chunk: Buffer) => (output += chunk.toString()));
    server.stderr?.on("data", (chunk: Buffer) => (output += chunk.toString()));
    const spawned = new Promise<void>((resolve, reject) => {
      started.once("spawn", resolve);
      started.once("error", (error) => reject(new Error(`cannot run ${BIN}: ${error.message}`)));
    });
    const [readOnly, other] = await Promise.all([
      createKey(root, "t", "read"),
      createKey(root, "other", "read,write"),
      spawned,
    ]);
    await waitHealthy(baseUrl, started, () => output.slice(-4000));
    project.provide("live", { baseUrl, keys: { readWrite, readOnly, other } });
  } catch (error) {
    if (server) await stop(server);
    await rm(root, { recursive: true, force: true });
    throw error;
  }
  const running = server;
  return async () => {
    await stop(running);
    await rm(root, { recursive: true, force: true });
  };
}
