import { APITimeoutError } from '../errors.js';
import { sleep, type APIClient, type RequestOptions } from '../core.js';
import type { AsyncAccepted, InvocationPage, InvocationRecord, InvocationStatus } from '../types.js';

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

export interface ListInvocationsParams {
  function?: string;
  status?: InvocationStatus;
  /** Page size, 1-200 (server default 50). */
  limit?: number;
  /** Start after this cursor (a previous page's `next_cursor`). */
  cursor?: string;
}

export class Invocations {
  constructor(private readonly client: APIClient) {}

  get(id: string, options?: RequestOptions): Promise<InvocationRecord> {
    return this.client.get(`/v1/invocations/${encodeURIComponent(id)}`, undefined, options);
  }

  /** One page, newest first. */
  listPage(params: ListInvocationsParams = {}, options?: RequestOptions): Promise<InvocationPage> {
    return this.client.get('/v1/invocations', { ...params }, options);
  }

  /**
   * Every matching invocation, newest first, fetching page after page (following
   * `next_cursor`) as the iteration proceeds. `limit` is the page size, not a total.
   */
  async *list(params: ListInvocationsParams = {}, options?: RequestOptions): AsyncGenerator<InvocationRecord> {
    let cursor = params.cursor;
    do {
      const page = await this.listPage({ ...params, cursor }, options);
      yield* page.invocations;
      cursor = page.next_cursor ?? undefined;
    } while (cursor);
  }

  /** Cancels queued or running work; a finished invocation is a 409 `not_cancellable`. */
  cancel(id: string, options?: RequestOptions): Promise<InvocationRecord> {
    return this.client.post(`/v1/invocations/${encodeURIComponent(id)}/cancel`, undefined, options);
  }
}

export interface WaitOptions {
  /** Give up (APITimeoutError) after this long. Default: no limit. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** First poll interval; it grows by half each poll up to `maxIntervalMs`. Default 250. */
  intervalMs?: number;
  /** Default 2000. */
  maxIntervalMs?: number;
}

/** An accepted asynchronous invocation. */
export class AsyncInvocation {
  readonly id: string;
  /** The status when accepted (`queued`, or the current one when an Idempotency-Key replayed). */
  readonly status: string;
  readonly function: string;
  readonly version: number;

  /** @internal */
  constructor(
    private readonly invocations: Invocations,
    accepted: AsyncAccepted,
  ) {
    this.id = accepted.invocation_id;
    this.status = accepted.status;
    this.function = accepted.function;
    this.version = accepted.version;
  }

  get(options?: RequestOptions): Promise<InvocationRecord> {
    return this.invocations.get(this.id, options);
  }

  /**
   * Polls GET /v1/invocations/{id} with a growing interval until the invocation is
   * `succeeded`, `failed` or `cancelled`, and returns that record (a failure is a record with
   * `error`, not an exception: the request itself succeeded).
   */
  async wait(options: WaitOptions = {}): Promise<InvocationRecord> {
    const deadline = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs;
    let interval = options.intervalMs ?? 250;
    const maxInterval = options.maxIntervalMs ?? 2000;
    for (;;) {
      const record = await this.get({ signal: options.signal });
      if (TERMINAL.has(record.status)) return record;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new APITimeoutError(`invocation ${this.id} is still ${record.status} after ${options.timeoutMs} ms`);
      }
      await sleep(Math.min(interval, left), options.signal);
      interval = Math.min(interval * 1.5, maxInterval);
    }
  }

  cancel(options?: RequestOptions): Promise<InvocationRecord> {
    return this.invocations.cancel(this.id, options);
  }
}
