// The HTTP core shared by every resource: authentication, the per-attempt timeout, retries with
// jittered exponential backoff that honour Retry-After, and mapping error responses to the
// GenrtError hierarchy. Uses the platform's fetch (Node >= 18), so it has no HTTP dependency.
// The retry loop is written here rather than taken from a retry library because its policy is
// genrt's (which 409 is transient, Retry-After's cap, which creates may repeat) and it is short.
import {
  APIConnectionError,
  APIError,
  APITimeoutError,
  APIUserAbortError,
} from './errors.js';

export const VERSION = '0.1.0';

export interface ClientOptions {
  /** Where genrt listens. Default: `GENRT_BASE_URL`, else `http://127.0.0.1:8080`. */
  baseURL?: string;
  /** An API key (`grt_...`). Default: `GENRT_API_KEY`. */
  apiKey?: string;
  /** A JWT. Default: `GENRT_TOKEN`. Used when no API key is given. */
  token?: string;
  /** Time allowed for each attempt of a request, in milliseconds. Default 60 000. */
  timeoutMs?: number;
  /** Retries after the first attempt, for retryable failures. Default 2. */
  maxRetries?: number;
  /** A fetch implementation to use instead of the global one (tests, proxies). */
  fetch?: typeof fetch;
  /** Headers sent with every request. */
  defaultHeaders?: Record<string, string>;
}

export interface RequestOptions {
  /** Cancels the request (and a stream's generation on the server). */
  signal?: AbortSignal;
  /** Overrides the client's `timeoutMs` for this call. */
  timeoutMs?: number;
  /** Overrides the client's `maxRetries` for this call. */
  maxRetries?: number;
  /** Extra headers for this call. */
  headers?: Record<string, string>;
}

export interface FinalRequest {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  path: string;
  query?: Record<string, string | number | undefined | null>;
  /** Serialized as JSON. */
  body?: unknown;
  /**
   * Sent as it is, `application/octet-stream` (a model file). A stream is sent once: a failed
   * attempt is not retried, since its bytes are gone.
   */
  rawBody?: Uint8Array | Blob | ReadableStream<Uint8Array>;
  options?: RequestOptions;
  /** Resolve with the open Response instead of reading the body (Server-Sent Events). */
  stream?: boolean;
  /**
   * Whether a failure without a response (connection reset, timeout) may be retried. False for
   * creates the server cannot deduplicate: the first attempt may have been committed.
   */
  retryWithoutResponse?: boolean;
}

/** The longest Retry-After honoured; a longer wait (a monthly quota) is reported at once. */
const MAX_RETRY_AFTER_MS = 60_000;
const INITIAL_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 8_000;

export class APIClient {
  readonly baseURL: string;
  readonly timeoutMs: number;
  readonly maxRetries: number;
  readonly #credential: string | undefined;
  readonly #fetch: typeof fetch;
  readonly #defaultHeaders: Record<string, string>;

  constructor(options: ClientOptions = {}) {
    const env = typeof process !== 'undefined' ? process.env : {};
    this.baseURL = (options.baseURL ?? env.GENRT_BASE_URL ?? 'http://127.0.0.1:8080').replace(/\/+$/, '');
    this.#credential = options.apiKey ?? options.token ?? env.GENRT_API_KEY ?? env.GENRT_TOKEN;
    this.timeoutMs = options.timeoutMs ?? 60_000;
    this.maxRetries = options.maxRetries ?? 2;
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.#defaultHeaders = options.defaultHeaders ?? {};
  }

  async get<T>(path: string, query?: FinalRequest['query'], options?: RequestOptions): Promise<T> {
    return (await this.request<T>({ method: 'GET', path, query, options })).data;
  }

  async post<T>(path: string, body: unknown, options?: RequestOptions): Promise<T> {
    return (await this.request<T>({ method: 'POST', path, body, options })).data;
  }

  async put<T>(path: string, body: unknown, options?: RequestOptions): Promise<T> {
    return (await this.request<T>({ method: 'PUT', path, body, options })).data;
  }

  async patch<T>(path: string, body: unknown, options?: RequestOptions): Promise<T> {
    return (await this.request<T>({ method: 'PATCH', path, body, options })).data;
  }

  async delete(path: string, options?: RequestOptions): Promise<void> {
    await this.request({ method: 'DELETE', path, options });
  }

  /** Sends a request, retrying what is retryable; resolves with the parsed body. */
  async request<T>(req: FinalRequest): Promise<{ data: T; response: Response }> {
    const options = req.options ?? {};
    const maxRetries = options.maxRetries ?? this.maxRetries;
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const url = this.#url(req.path, req.query);
    const headers = this.#headers(req, options);
    const body = req.rawBody ?? (req.body === undefined ? undefined : JSON.stringify(req.body));
    const streamed = req.rawBody instanceof ReadableStream;
    // Node's fetch sends a stream body only half-duplex, and says so only when asked.
    const init = streamed ? { duplex: 'half' } : {};

    for (let attempt = 0; ; attempt++) {
      const retriesLeft = maxRetries - attempt;
      const attemptSignal = new AttemptSignal(options.signal, timeoutMs);
      let response: Response;
      try {
        response = await this.#fetch(url, { method: req.method, headers, body, signal: attemptSignal.signal, ...init } as RequestInit);
      } catch (cause) {
        attemptSignal.done();
        const error = attemptSignal.failure(cause);
        if (error instanceof APIUserAbortError || retriesLeft <= 0 || req.retryWithoutResponse === false || streamed) throw error;
        await sleep(backoff(attempt), options.signal);
        continue;
      }

      if (response.ok) {
        if (req.stream) {
          // The timeout covers waiting for the response; the stream then lasts as long as
          // the caller reads it, and the caller's signal still closes it.
          attemptSignal.clearTimeout();
          return { data: undefined as T, response };
        }
        try {
          const data = (await readBody(response)) as T;
          return { data, response };
        } catch (cause) {
          const error = attemptSignal.failure(cause);
          if (error instanceof APIUserAbortError || retriesLeft <= 0 || req.retryWithoutResponse === false) throw error;
          await sleep(backoff(attempt), options.signal);
          continue;
        } finally {
          attemptSignal.done();
        }
      }

      let errorBody: unknown;
      try {
        errorBody = await readBody(response);
      } catch (cause) {
        errorBody = undefined;
        if (options.signal?.aborted) throw new APIUserAbortError(undefined, { cause });
      } finally {
        attemptSignal.done();
      }
      const error = APIError.generate(response.status, errorBody, response.statusText, response.headers);
      const delay = retriesLeft > 0 && !streamed ? retryDelay(response, error, attempt) : undefined;
      if (delay === undefined) throw error;
      await sleep(delay, options.signal);
    }
  }

  #url(path: string, query: FinalRequest['query']): string {
    const url = new URL(this.baseURL + path);
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
    }
    return url.toString();
  }

  #headers(req: FinalRequest, options: RequestOptions): Record<string, string> {
    const headers: Record<string, string> = {
      accept: req.stream ? 'text/event-stream' : 'application/json',
      'user-agent': `genrt-sdk-ts/${VERSION}`,
      ...this.#defaultHeaders,
    };
    if (this.#credential) headers.authorization = `Bearer ${this.#credential}`;
    if (req.rawBody !== undefined) headers['content-type'] = 'application/octet-stream';
    else if (req.body !== undefined) headers['content-type'] = 'application/json';
    return { ...headers, ...options.headers };
  }
}

/**
 * Whether and after how long a failed response is retried; undefined means "throw now".
 * Retried: 408, 429 and 5xx, and 409 only for `idempotency_in_progress` (an earlier request
 * with the same Idempotency-Key is still running). Every other 409 (`idempotency_key_reused`,
 * `not_cancellable`, `tenant_exists`...) is permanent, so retrying would only repeat it.
 */
function retryDelay(response: Response, error: APIError, attempt: number): number | undefined {
  const status = response.status;
  const retryable =
    status === 408 || status === 429 || status >= 500 || (status === 409 && error.code === 'idempotency_in_progress');
  if (!retryable) return undefined;
  const after = parseRetryAfter(response.headers.get('retry-after'));
  if (after === undefined) return backoff(attempt);
  return after <= MAX_RETRY_AFTER_MS ? after : undefined;
}

/** Retry-After as milliseconds: delay-seconds or an HTTP date (RFC 9110 §10.2.3). */
export function parseRetryAfter(value: string | null): number | undefined {
  if (value === null || value.trim() === '') return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - Date.now());
}

/** 0.5 s, 1 s, 2 s ... up to 8 s, minus up to 25% jitter so that clients spread out. */
function backoff(attempt: number): number {
  const base = Math.min(INITIAL_BACKOFF_MS * 2 ** attempt, MAX_BACKOFF_MS);
  return base * (1 - Math.random() * 0.25);
}

async function readBody(response: Response): Promise<unknown> {
  if (response.status === 204) return undefined;
  const text = await response.text();
  if (text === '') return undefined;
  const type = response.headers.get('content-type') ?? '';
  if (type.includes('json') && !type.includes('jsonl')) {
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  }
  return text;
}

/** Resolves after `ms`, or rejects with APIUserAbortError when the signal fires first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new APIUserAbortError());
    const onAbort = () => {
      clearTimeout(timer);
      reject(new APIUserAbortError());
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * The signal of one attempt: fires on the caller's abort or on the attempt's timeout, and
 * remembers which. Hand-written because AbortSignal.any() and AbortSignal.timeout()'s reason
 * handling are missing from Node 18, which this package supports.
 */
class AttemptSignal {
  readonly #controller = new AbortController();
  readonly #user: AbortSignal | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timedOut = false;
  readonly #timeoutMs: number;
  readonly #onUserAbort = () => this.#controller.abort(this.#user?.reason);

  constructor(user: AbortSignal | undefined, timeoutMs: number) {
    this.#user = user;
    this.#timeoutMs = timeoutMs;
    if (user?.aborted) this.#controller.abort(user.reason);
    else user?.addEventListener('abort', this.#onUserAbort, { once: true });
    this.#timer = setTimeout(() => {
      this.#timedOut = true;
      this.#controller.abort(new APITimeoutError());
    }, timeoutMs);
  }

  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  clearTimeout(): void {
    clearTimeout(this.#timer);
  }

  /** Stops both the timer and the link to the caller's signal. */
  done(): void {
    clearTimeout(this.#timer);
    this.#user?.removeEventListener('abort', this.#onUserAbort);
  }

  /** The SDK error for a failed fetch or body read. */
  failure(cause: unknown): Error {
    if (this.#user?.aborted) return new APIUserAbortError(undefined, { cause });
    if (this.#timedOut) return new APITimeoutError(`request timed out after ${this.#timeoutMs} ms`, { cause });
    const detail = cause instanceof Error ? (cause.cause instanceof Error ? cause.cause.message : cause.message) : String(cause);
    return new APIConnectionError(`connection error: ${detail}`, { cause });
  }
}
