// The client against a scripted local HTTP server: retries and their limits, Retry-After,
// timeouts, aborts, Idempotency-Keys and SSE parsing. No genrt needed.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, beforeEach, test } from 'node:test';
import {
  APIConnectionError,
  APIError,
  APITimeoutError,
  APIUserAbortError,
  ConflictError,
  Genrt,
  InternalServerError,
  RateLimitError,
} from '@genrt/sdk';

/** Each request is answered by the next handler in `script` (the last one repeats). */
let script = [];
let requests = [];
let server;
let baseURL;

before(async () => {
  server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      requests.push({ method: req.method, url: req.url, headers: req.headers, body });
      const handler = script[Math.min(requests.length - 1, script.length - 1)];
      handler(req, res);
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  baseURL = `http://127.0.0.1:${server.address().port}`;
});

after(() => new Promise((r) => server.close(r)));

beforeEach(() => {
  script = [];
  requests = [];
});

const json = (status, body, headers = {}) => (_req, res) => {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
};
const error = (status, code, headers = {}) => json(status, { error: { code, message: `${code} happened` } }, headers);
const ok = json(200, { functions: [] });
const client = (options = {}) => new Genrt({ baseURL, token: 't', ...options });

test('a 503 with Retry-After: 0 is retried and then succeeds', async () => {
  script = [error(503, 'overloaded', { 'retry-after': '0' }), ok];
  assert.deepEqual(await client().functions.list(), []);
  assert.equal(requests.length, 2);
  assert.equal(requests[1].headers.authorization, 'Bearer t');
});

test('Retry-After in seconds is waited for', async () => {
  script = [error(503, 'overloaded', { 'retry-after': '1' }), ok];
  const started = Date.now();
  await client().functions.list();
  assert.ok(Date.now() - started >= 950, 'waited about a second');
  assert.equal(requests.length, 2);
});

test('Retry-After as an HTTP date is honoured', async () => {
  const date = new Date(Date.now() + 1500).toUTCString(); // whole seconds: 0.5-1.5 s from now
  script = [error(429, 'rate_limited', { 'retry-after': date }), ok];
  const started = Date.now();
  await client().functions.list();
  assert.ok(Date.now() - started >= 400);
  assert.equal(requests.length, 2);
});

test('5xx are retried maxRetries times, then thrown', async () => {
  script = [error(500, 'internal', { 'retry-after': '0' })];
  await assert.rejects(client({ maxRetries: 2 }).functions.list(), (err) => {
    assert.ok(err instanceof InternalServerError);
    assert.equal(err.code, 'internal');
    return true;
  });
  assert.equal(requests.length, 3);
});

test('maxRetries 0 (per call) does not retry', async () => {
  script = [error(502, 'invalid_output', { 'retry-after': '0' }), ok];
  await assert.rejects(client().functions.list({ maxRetries: 0 }), InternalServerError);
  assert.equal(requests.length, 1);
});

test('a Retry-After beyond the cap (a monthly quota) is reported at once', async () => {
  script = [error(429, 'quota_exhausted', { 'retry-after': '3600' }), ok];
  await assert.rejects(client().functions.list(), (err) => err instanceof RateLimitError && err.code === 'quota_exhausted');
  assert.equal(requests.length, 1);
});

test('409: only idempotency_in_progress is retried', async () => {
  script = [error(409, 'idempotency_in_progress', { 'retry-after': '0' }), json(202, { invocation_id: 'i', status: 'queued', function: 'f', version: 1 })];
  const handle = await client().invokeAsync('f', {});
  assert.equal(handle.id, 'i');
  assert.equal(requests.length, 2);
  requests = [];
  script = [error(409, 'idempotency_key_reused'), ok];
  await assert.rejects(client().invokeAsync('f', {}), (err) => err instanceof ConflictError && err.code === 'idempotency_key_reused');
  assert.equal(requests.length, 1);
});

test('4xx other than 408/409/429 are not retried', async () => {
  script = [error(422, 'invalid_input'), ok];
  await assert.rejects(client().invoke('f', {}), (err) => err.status === 422 && err.field === undefined);
  assert.equal(requests.length, 1);
});

test('invokeAsync sends one Idempotency-Key, the same on every retry', async () => {
  script = [error(503, 'database_unavailable', { 'retry-after': '0' }), json(202, { invocation_id: 'i', status: 'queued', function: 'f', version: 1 })];
  await client().invokeAsync('f', { a: 1 });
  assert.equal(requests.length, 2);
  const [a, b] = requests.map((r) => r.headers['idempotency-key']);
  assert.ok(a && a.length >= 16);
  assert.equal(a, b);
  assert.deepEqual(JSON.parse(requests[0].body), { input: { a: 1 }, mode: 'async' });
});

test('a dropped connection is retried for reads and async invokes, not for batch creates', async () => {
  const drop = (req) => req.socket.destroy();
  script = [drop, ok];
  await client().functions.list();
  assert.equal(requests.length, 2);
  requests = [];
  script = [drop, json(202, { batch_id: 'b' })];
  await assert.rejects(client().batches.create('f', [{}]), APIConnectionError);
  assert.equal(requests.length, 1, 'a batch create that may have been committed is not repeated');
  requests = [];
  script = [error(503, 'overloaded', { 'retry-after': '0' }), json(202, { batch_id: 'b' })];
  assert.equal((await client().batches.create('f', [{}])).batch_id, 'b', 'an error response is retried');
  assert.equal(requests.length, 2);
});

test('a connection refused is an APIConnectionError', async () => {
  const dead = new Genrt({ baseURL: 'http://127.0.0.1:9', maxRetries: 0 });
  await assert.rejects(dead.functions.list(), (err) => err instanceof APIConnectionError && !(err instanceof APITimeoutError));
});

test('timeoutMs bounds each attempt; a timeout is retried like a connection error', async () => {
  const slow = (_req, res) => setTimeout(() => ok(_req, res), 2000);
  script = [slow];
  const started = Date.now();
  await assert.rejects(client({ timeoutMs: 200, maxRetries: 0 }).functions.list(), APITimeoutError);
  assert.ok(Date.now() - started < 1500);
  assert.equal(requests.length, 1);
  requests = [];
  script = [slow, ok];
  assert.deepEqual(await client({ timeoutMs: 10_000 }).functions.list({ timeoutMs: 200 }), []);
  assert.equal(requests.length, 2);
});

test('an aborted signal is an APIUserAbortError and is not retried', async () => {
  script = [(_req, res) => setTimeout(() => ok(_req, res), 2000)];
  const controller = new AbortController();
  setTimeout(() => controller.abort(), 100);
  await assert.rejects(client().functions.list({ signal: controller.signal }), APIUserAbortError);
  assert.equal(requests.length, 1);
});

test('errors carry status, code, field and the x-request-id header', async () => {
  script = [json(422, { error: { code: 'invalid_input', message: 'too short', field: 'input.who' } }, { 'x-request-id': 'req-42' })];
  await assert.rejects(client().invoke('f', {}), (err) => {
    assert.ok(err instanceof APIError);
    assert.equal(err.name, 'UnprocessableEntityError');
    assert.equal(err.status, 422);
    assert.equal(err.code, 'invalid_input');
    assert.equal(err.field, 'input.who');
    assert.equal(err.requestId, 'req-42');
    assert.match(err.message, /too short/);
    return true;
  });
});

const sse = (chunks) => (_req, res) => {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  let i = 0;
  const next = () => (i < chunks.length ? res.write(chunks[i++], () => setTimeout(next, 5)) : res.end());
  next();
};
const done = { invocation_id: 'i', function: 'f', version: 1, model: 'm', finish_reason: 'stop', cache_hit: false, usage: { prompt_tokens: 3, completion_tokens: 2, cached_prompt_tokens: 0 }, timings: {} };

test('SSE: events split across chunks, comments and keep-alives parse', async () => {
  script = [sse([': keep-alive\n\n', 'event: token\ndata: {"te', 'xt":"Hel"}\n\n', 'event: token\r\ndata: {"text":"lo"}\r\n\r\n', `event: done\ndata: ${JSON.stringify(done)}\n\n`])];
  const events = [];
  for await (const e of client().stream('f', {})) events.push(e);
  assert.deepEqual(events.map((e) => e.type), ['token', 'token', 'done']);
  assert.equal(events[0].text + events[1].text, 'Hello');
  assert.equal(events[2].usage.completion_tokens, 2);
  assert.equal(JSON.parse(requests[0].body).stream, true);
  assert.equal(requests[0].headers.accept, 'text/event-stream');
});

test('SSE: an error event is thrown as an APIError with the code', async () => {
  script = [sse(['event: token\ndata: {"text":"a"}\n\n', 'event: error\ndata: {"error":{"code":"timeout","message":"too slow"}}\n\n'])];
  const stream = client().stream('f', {});
  await assert.rejects(stream.finalResponse(), (err) => err instanceof APIError && err.code === 'timeout' && err.status === undefined);
  assert.equal(stream.text, 'a');
});

test('SSE: a stream cut before done is an error, not a silent end', async () => {
  script = [sse(['event: token\ndata: {"text":"a"}\n\n'])];
  await assert.rejects(client().stream('f', {}).finalResponse(), /ended before its done event/);
});
