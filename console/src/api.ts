// The console's only way to the server: the same `/v1` routes, with the same bearer
// credential and scopes, as any other client. The paths and their types come from the SDK's
// file generated from genrt's OpenAPI document, so a changed API breaks this build.
import createClient, { type Middleware } from 'openapi-fetch';
import { createParser } from 'eventsource-parser';
import type { components, paths } from '../../sdk-ts/src/generated/openapi';

export type Schemas = components['schemas'];
export type Me = Schemas['CallerInfo'];

/** A refused request: HTTP status, genrt's machine-readable code and message, the field. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string | null,
  ) {
    super(message);
  }
}

// The credential lives in session storage: gone when the tab closes, never in a URL.
const STORAGE_KEY = 'genrt.console.credential';
let credential: string | null = sessionStorage.getItem(STORAGE_KEY);

export function hasCredential(): boolean {
  return credential !== null;
}

export function setCredential(value: string | null): void {
  credential = value;
  if (value === null) sessionStorage.removeItem(STORAGE_KEY);
  else sessionStorage.setItem(STORAGE_KEY, value);
}

// ----------------------------------------------------------------------------------------
// Connection state: a request that gets no answer at all marks the server unreachable; a
// probe of /healthz then runs until it answers, and every open page reloads.

type Listener = () => void;
let offline = false;
const connectionListeners = new Set<Listener>();
let probe: number | undefined;

export function isOffline(): boolean {
  return offline;
}

export function onConnectionChange(listener: Listener): () => void {
  connectionListeners.add(listener);
  return () => connectionListeners.delete(listener);
}

function setOffline(value: boolean): void {
  if (offline === value) return;
  offline = value;
  connectionListeners.forEach((l) => l());
  if (value && probe === undefined) {
    probe = window.setInterval(async () => {
      try {
        const r = await fetch('/healthz', { cache: 'no-store' });
        if (r.ok) {
          window.clearInterval(probe);
          probe = undefined;
          setOffline(false);
        }
      } catch {
        // Still away.
      }
    }, 1500);
  }
}

/** A request that gets no answer in this time counts as a lost connection. */
const ANSWER_TIMEOUT_MS = 20_000;

/** fetch, noting whether the server answered. */
async function trackedFetch(input: Request | string | URL, init?: RequestInit): Promise<Response> {
  try {
    // Data calls (openapi-fetch passes a Request) get a deadline, so that one request left
    // hanging cannot hold a page's polling; streams bring their own signal and have none.
    const deadline = AbortSignal.timeout(ANSWER_TIMEOUT_MS);
    const signal = input instanceof Request ? AbortSignal.any([input.signal, deadline]) : init?.signal;
    const response = await fetch(input, { ...init, signal });
    setOffline(false);
    return response;
  } catch (e) {
    if (!(e instanceof DOMException && e.name === 'AbortError')) setOffline(true);
    throw e;
  }
}

// A refused credential (expired, revoked) sends the user back to sign in.
let unauthorized: (e: ApiError) => void = () => {};
export function onUnauthorized(handler: (e: ApiError) => void): void {
  unauthorized = handler;
}

const auth: Middleware = {
  onRequest({ request }) {
    if (credential) request.headers.set('Authorization', `Bearer ${credential}`);
    return request;
  },
};

export const client = createClient<paths>({ baseUrl: '', fetch: trackedFetch });
client.use(auth);

async function toError(response: Response, body: unknown): Promise<ApiError> {
  const detail = (body as Schemas['ErrorBody'] | undefined)?.error;
  const error = detail
    ? new ApiError(response.status, detail.code, detail.message, detail.field)
    : new ApiError(response.status, 'http_error', `${response.status} ${response.statusText}`);
  if (response.status === 401) unauthorized(error);
  return error;
}

/** The data of an openapi-fetch call, or its error thrown as an ApiError. */
export async function unwrap<T>(
  call: Promise<{ data?: T; error?: unknown; response: Response }>,
): Promise<T> {
  const { data, error, response } = await call;
  if (!response.ok) throw await toError(response, error);
  return data as T;
}

/** Who the stored credential is; throws ApiError 401 for a refused one. */
export function whoAmI(): Promise<Me> {
  return unwrap(client.GET('/v1/me'));
}

// ----------------------------------------------------------------------------------------
// Streamed invocations: Server-Sent Events over fetch (EventSource cannot send a bearer
// header), framed by eventsource-parser. Aborting the request is what stops the generation
// on the server and frees its slot.

export type StreamDone = Schemas['StreamDone'];

export async function streamInvoke(
  reference: string,
  body: Schemas['InvokeRequest'],
  signal: AbortSignal,
  onToken: (text: string) => void,
): Promise<StreamDone> {
  const response = await trackedFetch(`/v1/functions/${encodeURIComponent(reference)}/invoke`, {
    method: 'POST',
    headers: {
      'Content-Type': 'application/json',
      Accept: 'text/event-stream',
      ...(credential ? { Authorization: `Bearer ${credential}` } : {}),
    },
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!response.ok || !response.body) {
    throw await toError(response, await response.json().catch(() => undefined));
  }
  let done: StreamDone | undefined;
  let failure: ApiError | undefined;
  const parser = createParser({
    onEvent(event) {
      if (event.event === 'token') onToken((JSON.parse(event.data) as { text: string }).text);
      else if (event.event === 'done') done = JSON.parse(event.data) as StreamDone;
      else if (event.event === 'error') {
        const { error } = JSON.parse(event.data) as Schemas['ErrorBody'];
        failure = new ApiError(response.status, error.code, error.message, error.field);
      }
    },
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  try {
    // The last event ends the call, whether or not the connection has closed yet, so that a
    // stop pressed after it does not turn a finished generation into a stopped one.
    while (!done && !failure) {
      let chunk: ReadableStreamReadResult<string>;
      try {
        chunk = await reader.read();
      } catch (e) {
        if (!signal.aborted) setOffline(true);
        throw e;
      }
      if (chunk.done) break;
      parser.feed(chunk.value);
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  if (failure) throw failure;
  if (!done) throw new ApiError(0, 'stream_ended', 'the stream ended before its last event');
  return done;
}
