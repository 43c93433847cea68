/** The service's OpenAI-compatible endpoints, driven by the official `openai` npm package. */

import OpenAI from "openai";
import { describe, expect, inject, it } from "vitest";
import { MegaContextClient } from "../src/index.js";

const live = inject("live");
const TREE = "openai-notes";
const TEXT = Array.from(
  { length: 40 },
  (_, i) => `Entry ${i}: the ferry left pier ${i} at ${i % 12} o'clock with ${i * 2} crates.`,
).join("\n");

describe("the openai npm client against megacontext serve", () => {
  it("lists trees as models, completes, streams with usage, and maps errors", async () => {
    const mc = new MegaContextClient({ baseUrl: live.baseUrl, apiKey: live.keys.readWrite });
    await mc.createTree(TREE);
    await mc.ingest(TREE, { text: TEXT, metadata: { path: "ferries.txt" } });

    const openai = new OpenAI({
      baseURL: `${live.baseUrl}/v1`,
      apiKey: live.keys.readOnly,
      maxRetries: 0,
    });
    const models = [];
    for await (const model of openai.models.list()) models.push(model.id);
    expect(models).toContain(TREE);

    const messages = [{ role: "user" as const, content: "When did the ferry leave pier 7?" }];
    const whole = await openai.chat.completions.create({ model: TREE, messages, max_tokens: 8 });
    const text = whole.choices[0]!.message.content ?? "";
    expect(whole.choices[0]!.message.role).toBe("assistant");
    expect(whole.usage!.total_tokens).toBe(whole.usage!.prompt_tokens + whole.usage!.completion_tokens);

    const stream = await openai.chat.completions.create({
      model: TREE,
      messages,
      max_tokens: 8,
      stream: true,
      stream_options: { include_usage: true },
    });
    let streamed = "";
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      streamed += chunk.choices[0]?.delta?.content ?? "";
      if (chunk.usage) usage = chunk.usage;
    }
    expect(streamed).toBe(text); // the same greedy answer, streamed
    expect(usage).toEqual(whole.usage);

    await expect(
      openai.chat.completions.create({ model: "no-such-tree", messages }),
    ).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    const wrongKey = new OpenAI({ baseURL: `${live.baseUrl}/v1`, apiKey: "mck_bad", maxRetries: 0 });
    await expect(wrongKey.models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
  });
});
