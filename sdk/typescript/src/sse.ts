/** A server-sent events parser (the WHATWG event-stream format) over a fetch body. */

export interface ServerSentEvent {
  /** The event's name ("message" when the stream named none). */
  event: string;
  /** Its data lines, joined with "\n". */
  data: string;
}

/**
 * The events of an event stream, as its bytes arrive. `onChunk` is called for every chunk
 * read (the client restarts its idle timeout there). Lines may end in LF, CRLF or CR; comment
 * lines (":") and other fields (id, retry) are skipped; an event is dispatched at a blank line,
 * and a last event the stream does not finish is dropped, as the format says.
 */
export async function* parseEventStream(
  body: ReadableStream<Uint8Array>,
  onChunk: () => void = () => {},
): AsyncGenerator<ServerSentEvent, void, undefined> {
  const reader = body.getReader();
  const decoder = new TextDecoder("utf-8"); // drops a leading BOM
  const lineEnd = /\r\n|\r|\n/g;
  let buffer = "";
  let event = "";
  let data: string[] = [];

  function* complete(ended: boolean): Generator<ServerSentEvent> {
    let start = 0;
    for (;;) {
      lineEnd.lastIndex = start;
      const found = lineEnd.exec(buffer);
      if (found === null) break;
      // A CR that ends the buffer may be the first half of a CRLF: wait for more, unless done.
      if (found[0] === "\r" && found.index === buffer.length - 1 && !ended) break;
      const line = buffer.slice(start, found.index);
      start = found.index + found[0].length;
      if (line === "") {
        if (data.length > 0) yield { event: event || "message", data: data.join("\n") };
        event = "";
        data = [];
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    buffer = buffer.slice(start);
  }

  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        buffer += decoder.decode();
        yield* complete(true);
        return;
      }
      onChunk();
      buffer += decoder.decode(value, { stream: true });
      yield* complete(false);
    }
  } finally {
    await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}
