// A streamed invocation: the server's Server-Sent Events (`token` events, then `done` or
// `error`) as an async iterable. SSE framing is parsed by eventsource-parser rather than by
// hand (comments, multi-line data, split chunks and keep-alives are its job).
import { createParser, type EventSourceMessage } from 'eventsource-parser';
import { APIError, APIUserAbortError, GenrtError } from './errors.js';
import type { StreamDone } from './types.js';

/** One text piece as it is generated. */
export interface TokenEvent {
  type: 'token';
  text: string;
}

/** The last event: usage, timings, finish reason and ids (the text itself came as tokens). */
export type DoneEvent = { type: 'done' } & StreamDone;

export type StreamEvent = TokenEvent | DoneEvent;

/**
 * Iterate it with `for await` to get `{type: 'token', text}` events and finally one
 * `{type: 'done', usage, ...}`. Breaking out of the loop, calling `abort()` or firing the
 * signal given to `stream()` closes the HTTP stream, which cancels the generation on the server
 * and frees its slot. An `error` event from the server is thrown as an APIError (its `status`
 * is undefined: the stream itself was a 200). A stream can be iterated once.
 */
export class InvocationStream implements AsyncIterable<StreamEvent> {
  readonly #controller = new AbortController();
  readonly #userSignal: AbortSignal | undefined;
  readonly #onUserAbort = () => this.#controller.abort(this.#userSignal?.reason);
  readonly #response: Promise<Response>;
  #consumed = false;
  #done: DoneEvent | undefined;
  #text = '';

  /** @internal */
  constructor(open: (signal: AbortSignal) => Promise<Response>, signal?: AbortSignal) {
    this.#userSignal = signal;
    if (signal?.aborted) this.#controller.abort(signal.reason);
    else signal?.addEventListener('abort', this.#onUserAbort, { once: true });
    this.#response = open(this.#controller.signal);
    // Failures surface on iteration; this keeps an unread stream from an unhandled rejection.
    this.#response.catch(() => {});
  }

  /** Closes the stream; the server stops the generation. */
  abort(): void {
    this.#controller.abort();
  }

  /** The text received so far (all of it, once the stream is done). */
  get text(): string {
    return this.#text;
  }

  /** Reads the stream to its end and returns the final `done` event. */
  async finalResponse(): Promise<DoneEvent> {
    if (!this.#consumed) for await (const _ of this);
    if (!this.#done) throw new GenrtError('the stream ended without a done event');
    return this.#done;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<StreamEvent> {
    if (this.#consumed) throw new GenrtError('a stream can be iterated only once');
    this.#consumed = true;
    let response: Response;
    try {
      response = await this.#response;
    } catch (err) {
      this.#userSignal?.removeEventListener('abort', this.#onUserAbort);
      throw err;
    }
    if (!response.body) throw new GenrtError('the stream response has no body');
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const pending: EventSourceMessage[] = [];
    const parser = createParser({ onEvent: (event) => pending.push(event) });
    let finished = false;
    try {
      while (!finished) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (cause) {
          if (this.#controller.signal.aborted) throw new APIUserAbortError('the stream was aborted', { cause });
          throw cause;
        }
        if (chunk.done) break;
        parser.feed(decoder.decode(chunk.value, { stream: true }));
        while (pending.length > 0) {
          const event = this.#convert(pending.shift()!, response.headers);
          if (event === undefined) continue;
          yield event;
          if (event.type === 'done') finished = true;
        }
      }
      if (!finished) {
        if (this.#controller.signal.aborted) throw new APIUserAbortError('the stream was aborted');
        throw new GenrtError('the stream ended before its done event');
      }
    } finally {
      // On break, abort or error: closing the connection is what cancels the generation.
      if (!finished) this.#controller.abort();
      this.#userSignal?.removeEventListener('abort', this.#onUserAbort);
      await reader.cancel().catch(() => {});
    }
  }

  #convert(message: EventSourceMessage, headers: Headers): StreamEvent | undefined {
    switch (message.event) {
      case 'token': {
        const { text } = JSON.parse(message.data) as { text: string };
        this.#text += text;
        return { type: 'token', text };
      }
      case 'done':
        this.#done = { type: 'done', ...(JSON.parse(message.data) as StreamDone) };
        return this.#done;
      case 'error':
        throw APIError.generate(undefined, JSON.parse(message.data), 'the stream failed', headers);
      default:
        // Unknown events are skipped so that the server can add new ones.
        return undefined;
    }
  }
}
