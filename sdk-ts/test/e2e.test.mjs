// End to end against a real genrt (SQLite, the real SmolLM2 model): the CLI, every kind of
// invocation, cancellation, pagination and how server errors map to SDK errors.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import {
  APIError,
  APIUserAbortError,
  AuthenticationError,
  ConflictError,
  Genrt,
  NotFoundError,
  RateLimitError,
  UnprocessableEntityError,
} from '@genrt/sdk';
import { MODEL_ID, startServer } from './server.mjs';

const sdkRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const run = promisify(execFile);

/** Deterministic and uncached, so that every call really generates. */
const SAY = {
  name: 'say',
  model: MODEL_ID,
  prompt: 'Say hello to {{ who }} in one short sentence.',
  input_schema: { type: 'object', properties: { who: { type: 'string', minLength: 2 } }, required: ['who'] },
  params: { max_tokens: 12, temperature: 0 },
  cache: { enabled: false },
};
/** Generates far longer than any test waits (1500 tokens at ~100 tokens/s). */
const LONG = { max_tokens: 1500, ignore_eos: true };

let server;
let genrt;

before(async () => {
  server = await startServer();
  genrt = new Genrt({ baseURL: server.baseURL, token: await server.token('acme'), timeoutMs: 30_000 });
  await genrt.functions.deploy(SAY);
});

after(async () => {
  await server?.stop();
});

async function deployCli() {
  const env = { ...process.env, GENRT_BASE_URL: server.baseURL, GENRT_TOKEN: await server.token('acme') };
  const { stdout } = await run(process.execPath, ['dist/cli.js', 'examples'], { cwd: sdkRoot, env });
  return stdout;
}

test('genrt-deploy deploys the examples once, then reports them unchanged', async () => {
  const first = await deployCli();
  assert.match(first, /^news-brief → v1 \(created\)$/m);
  assert.match(first, /^product-description → v1 \(created\)$/m);
  assert.match(first, /^tagline → v1 \(created\)$/m);
  const second = await deployCli();
  assert.match(second, /^news-brief → v1 \(unchanged\)$/m);
  assert.match(second, /^product-description → v1 \(unchanged\)$/m);
  assert.equal((await genrt.functions.versions('news-brief')).length, 1);
  const detail = await genrt.functions.get('product-description');
  assert.equal(detail.latest_version, 1);
  assert.equal(detail.definition.route?.default, MODEL_ID);
  const names = (await genrt.functions.list()).map((f) => f.name).sort();
  assert.deepEqual(names, ['news-brief', 'product-description', 'say', 'tagline']);
});

test('genrt-deploy exits non-zero with the server error', async () => {
  const env = { ...process.env, GENRT_BASE_URL: server.baseURL, GENRT_TOKEN: 'not-a-token' };
  await assert.rejects(run(process.execPath, ['dist/cli.js', 'examples'], { cwd: sdkRoot, env }), (err) => {
    assert.equal(err.code, 1);
    assert.match(err.stderr, /401 invalid_token/);
    return true;
  });
});

test('evaluate scores a version; a reference equal to the output scores 1', async () => {
  const out = await genrt.invoke('say', { who: 'Grace' });
  const exact = await genrt.functions.evaluate('say', {
    version: 1,
    cases: [{ input: { who: 'Grace' }, reference: out.output.text }],
  });
  assert.equal(exact.version, 1);
  assert.equal(exact.failed, 0);
  assert.equal(exact.cases[0].output, out.output.text);
  assert.equal(exact.rouge_l, 1);
  const other = await genrt.functions.evaluate('say', { cases: [{ input: { who: 'Linus' }, reference: 'Hello there, Linus!' }] });
  assert.ok(other.rouge_l >= 0 && other.rouge_l <= 1 && other.bleu >= 0 && other.bleu <= 1);
  await assert.rejects(genrt.functions.evaluate('say', { version: 42, cases: [] }), (err) => {
    assert.ok(err instanceof NotFoundError);
    assert.equal(err.code, 'version_not_found');
    return true;
  });
});

test('invoke returns text and usage', async () => {
  const res = await genrt.invoke('say', { who: 'Ada' });
  assert.equal(res.function, 'say');
  assert.ok(res.output.text.length > 0);
  assert.ok(res.usage.completion_tokens > 0 && res.usage.completion_tokens <= 12);
  assert.ok(res.usage.prompt_tokens > 0);
  assert.equal((await genrt.invocations.get(res.invocation_id)).status, 'succeeded');
});

test('invoke a routed example with overridden params', async () => {
  const res = await genrt.invoke('product-description', { product: 'a solar lamp', category: 'garden' }, { params: { max_tokens: 8 } });
  assert.equal(res.model, MODEL_ID);
  assert.ok(res.usage.completion_tokens <= 8);
});

test('stream yields tokens, then done with usage', async () => {
  const stream = genrt.stream('say', { who: 'Grace' });
  const tokens = [];
  let done;
  for await (const event of stream) {
    if (event.type === 'token') {
      assert.equal(done, undefined, 'no token after done');
      tokens.push(event.text);
    } else done = event;
  }
  assert.ok(tokens.length > 0);
  assert.ok(done, 'a done event');
  assert.equal(done.function, 'say');
  assert.ok(done.usage.completion_tokens >= tokens.length);
  assert.equal(stream.text, tokens.join(''));
  assert.ok(stream.text.length > 0);
  assert.equal((await genrt.invocations.get(done.invocation_id)).status, 'succeeded');
});

test('finalResponse() reads a stream to its done event', async () => {
  const done = await genrt.stream('say', { who: 'Linus' }).finalResponse();
  assert.equal(done.type, 'done');
  assert.ok(done.usage.completion_tokens > 0);
});

test('models.devices() lists the loaded backends, and a model says where it runs', async () => {
  const devices = await genrt.models.devices();
  assert.deepEqual(devices.backends, ['CPU']);
  assert.equal(devices.gpu_offload, false);
  assert.ok(devices.devices.some((d) => d.kind === 'cpu' && d.backend === 'CPU'));
  const model = await genrt.models.get(MODEL_ID);
  assert.equal(model.device, 'CPU');
  assert.equal(model.gpu_memory_bytes, 0);
});

async function busySlots() {
  return (await genrt.models.get(MODEL_ID)).busy_slots;
}

test('aborting a stream frees the server slot long before the generation would end', async () => {
  const controller = new AbortController();
  const stream = genrt.stream('say', { who: 'Alan' }, { params: LONG, signal: controller.signal });
  let tokens = 0;
  let busyWhileStreaming;
  await assert.rejects(
    (async () => {
      for await (const event of stream) {
        if (event.type !== 'token') continue;
        tokens++;
        if (tokens === 5) {
          busyWhileStreaming = await busySlots();
          controller.abort();
        }
      }
    })(),
    APIUserAbortError,
  );
  assert.equal(busyWhileStreaming, 1, 'the generation held a slot while streaming');
  const abortedAt = Date.now();
  while ((await busySlots()) !== 0) {
    assert.ok(Date.now() - abortedAt < 5000, 'slot still busy 5 s after the abort');
    await new Promise((r) => setTimeout(r, 50));
  }
  // 1500 tokens take about 15 s here, so a free slot within 5 s means the abort stopped it.
});

test('leaving a stream loop early also cancels the generation', async () => {
  for await (const event of genrt.stream('say', { who: 'Barbara' }, { params: LONG })) {
    if (event.type === 'token') break;
  }
  const left = Date.now();
  while ((await busySlots()) !== 0) {
    assert.ok(Date.now() - left < 5000, 'slot still busy 5 s after leaving the loop');
    await new Promise((r) => setTimeout(r, 50));
  }
});

test('invokeAsync returns a handle whose wait() polls to the result', async () => {
  const handle = await genrt.invokeAsync('say', { who: 'Edsger' });
  assert.match(handle.id, /^[0-9a-f-]{36}$/);
  assert.equal(handle.status, 'queued');
  const record = await handle.wait({ timeoutMs: 30_000 });
  assert.equal(record.status, 'succeeded');
  assert.equal(record.mode, 'async');
  assert.ok(record.output?.text);
});

test('invokeAsync with the same Idempotency-Key returns the same invocation', async () => {
  const a = await genrt.invokeAsync('say', { who: 'Donald' }, { idempotencyKey: 'order-1' });
  const b = await genrt.invokeAsync('say', { who: 'Donald' }, { idempotencyKey: 'order-1' });
  assert.equal(a.id, b.id);
  await assert.rejects(genrt.invokeAsync('say', { who: 'Other' }, { idempotencyKey: 'order-1' }), (err) => {
    assert.ok(err instanceof ConflictError);
    assert.equal(err.code, 'idempotency_key_reused');
    return true;
  });
  await a.wait({ timeoutMs: 30_000 });
});

test('cancel stops an async invocation; a finished one is not cancellable', async () => {
  const handle = await genrt.invokeAsync('say', { who: 'Barbara' }, { params: LONG });
  await handle.cancel();
  const record = await handle.wait({ timeoutMs: 10_000 });
  assert.equal(record.status, 'cancelled');
  const finished = await genrt.invokeAsync('say', { who: 'Frances' });
  assert.equal((await finished.wait({ timeoutMs: 30_000 })).status, 'succeeded');
  await assert.rejects(finished.cancel(), (err) => err instanceof ConflictError && err.code === 'not_cancellable');
});

test('wait() gives up after its timeout', async () => {
  const handle = await genrt.invokeAsync('say', { who: 'Niklaus' }, { params: LONG });
  const started = Date.now();
  await assert.rejects(handle.wait({ timeoutMs: 300 }), { name: 'APITimeoutError' });
  assert.ok(Date.now() - started < 3000);
  await handle.cancel();
});

test('invocations.list follows next_cursor through every page without duplicates', async () => {
  // Async invocations are committed before the 202 (synchronous ones are recorded
  // write-behind, so a listing right after them may not show them all yet). The function is
  // cached, so only the first one generates.
  await genrt.functions.deploy({ ...SAY, name: 'pager', cache: {} });
  const created = [];
  for (let i = 0; i < 7; i++) created.push((await genrt.invokeAsync('pager', { who: 'Ken' })).id);
  const firstPage = await genrt.invocations.listPage({ function: 'pager', limit: 3 });
  assert.equal(firstPage.invocations.length, 3);
  assert.ok(firstPage.next_cursor, 'more pages');
  const seen = [];
  for await (const record of genrt.invocations.list({ function: 'pager', limit: 3 })) seen.push(record.invocation_id);
  assert.equal(new Set(seen).size, seen.length, 'no duplicates');
  assert.deepEqual([...seen].sort(), [...created].sort());
  assert.deepEqual(seen, [...created].reverse(), 'newest first');
});

test('batches: create, get until completed, results in input order', async () => {
  const batch = await genrt.batches.create('say', [{ who: 'Ada' }, { who: 'Alan' }], { params: { max_tokens: 4 } });
  assert.equal(batch.total, 2);
  let info = batch;
  const deadline = Date.now() + 30_000;
  while (info.status !== 'completed') {
    assert.ok(Date.now() < deadline, 'batch completed in time');
    await new Promise((r) => setTimeout(r, 200));
    info = await genrt.batches.get(batch.batch_id);
  }
  const results = await genrt.batches.results(batch.batch_id);
  assert.deepEqual(results.map((r) => r.index), [0, 1]);
  assert.ok(results.every((r) => r.status === 'succeeded'));
});

test('usage counts the invocations', async () => {
  const report = await genrt.usage.get({ groupBy: 'function' });
  const say = report.usage.find((u) => u.key === 'say');
  assert.ok(say && say.invocations > 0 && say.completion_tokens > 0);
});

test('webhooks.verify accepts a payload signed with the tenant secret from the API', async () => {
  const { Webhook } = await import('standardwebhooks');
  const [secret] = await genrt.webhooks.secrets();
  assert.match(secret, /^whsec_/);
  const body = JSON.stringify({ type: 'invocation.succeeded', timestamp: new Date().toISOString(), data: {} });
  const headers = { 'webhook-id': 'msg_1', 'webhook-timestamp': String(Math.floor(Date.now() / 1000)) };
  headers['webhook-signature'] = new Webhook(secret).sign('msg_1', new Date(), body);
  assert.equal(genrt.webhooks.verify(body, headers, secret).type, 'invocation.succeeded');
});

test('apiKeys.me() says whom the credential is for and what it may do', async () => {
  const me = await genrt.apiKeys.me();
  assert.equal(me.tenant, 'acme');
  assert.equal(me.credential, 'token');
  assert.ok(me.scopes.includes('functions:write') && !me.scopes.includes('admin'), me.scopes.join(' '));
  const narrow = new Genrt({ baseURL: server.baseURL, token: await server.token('acme', ['invocations:read']) });
  assert.deepEqual((await narrow.apiKeys.me()).scopes, ['invocations:read']);
});

test('401: a bad token is an AuthenticationError', async () => {
  const bad = new Genrt({ baseURL: server.baseURL, token: 'nope', maxRetries: 0 });
  await assert.rejects(bad.functions.list(), (err) => {
    assert.ok(err instanceof AuthenticationError);
    assert.ok(err instanceof APIError);
    assert.equal(err.status, 401);
    assert.equal(err.code, 'invalid_token');
    assert.equal(err.requestId, err.headers.get('x-request-id') ?? undefined);
    return true;
  });
});

test('404: an unknown function is a NotFoundError, for invoke and stream alike', async () => {
  await assert.rejects(genrt.invoke('missing', {}), (err) => {
    assert.ok(err instanceof NotFoundError);
    assert.equal(err.code, 'function_not_found');
    return true;
  });
  await assert.rejects(genrt.stream('missing', {}).finalResponse(), NotFoundError);
});

test('422: invalid input is an UnprocessableEntityError naming the field', async () => {
  await assert.rejects(genrt.invoke('say', { who: 'x' }), (err) => {
    assert.ok(err instanceof UnprocessableEntityError);
    assert.equal(err.status, 422);
    assert.equal(err.code, 'invalid_input');
    assert.match(err.field, /^input/);
    return true;
  });
});

test('429: a tenant over its rate limit gets a RateLimitError; retries honour Retry-After', async () => {
  const admin = new Genrt({ baseURL: server.baseURL, token: await server.token('ops', ['admin']) });
  await admin.admin.tenants.create({ id: 'limited', rate_limit_rps: 1, rate_limit_burst: 1 });
  const token = await server.token('limited');
  const noRetry = new Genrt({ baseURL: server.baseURL, token, maxRetries: 0 });
  await noRetry.functions.list();
  await assert.rejects(noRetry.functions.list(), (err) => {
    assert.ok(err instanceof RateLimitError);
    assert.equal(err.status, 429);
    assert.equal(err.code, 'rate_limited');
    assert.ok(Number(err.headers.get('retry-after')) >= 1);
    return true;
  });
  // With retries, the SDK waits as told and gets through.
  const retrying = new Genrt({ baseURL: server.baseURL, token, maxRetries: 2 });
  assert.deepEqual(await retrying.functions.list(), []);
});

test('models: register by upload (streamed, with progress), serve, delete', async () => {
  const { createHash } = await import('node:crypto');
  const { createReadStream } = await import('node:fs');
  const { readFile } = await import('node:fs/promises');
  const { Readable } = await import('node:stream');
  const { MODEL_PATH } = await import('./server.mjs');
  const admin = new Genrt({ baseURL: server.baseURL, token: await server.token('ops', ['admin']) });
  const sha256 = createHash('sha256').update(await readFile(MODEL_PATH)).digest('hex');
  const created = await admin.models.register({
    id: 'sdk-upload',
    source: { upload: true },
    sha256,
    settings: { n_ctx: 512, threads: 1 },
  });
  assert.equal(created.registration.state, 'awaiting_upload');
  // A tenant registers only its own models, named `<tenant>.<name>`.
  await assert.rejects(
    genrt.models.register({ id: 'nope', source: { upload: true }, sha256 }),
    (err) => err instanceof UnprocessableEntityError && err.field === 'id',
  );
  await admin.models.upload('sdk-upload', Readable.toWeb(createReadStream(MODEL_PATH)));
  const seen = [];
  const ready = await admin.models.waitUntilRegistered('sdk-upload', {
    intervalMs: 50,
    onProgress: (m) => seen.push(m.registration.state),
  });
  assert.equal(ready.registration.state, 'ready', JSON.stringify(ready));
  assert.equal(ready.registration.file.architecture, 'llama');
  assert.equal(ready.registration.sha256, sha256);
  assert.ok(seen.length >= 1);
  await genrt.functions.deploy({ ...SAY, name: 'say-uploaded', model: 'sdk-upload' });
  const out = await genrt.invoke('say-uploaded', { who: 'Ada' });
  assert.equal(out.model, 'sdk-upload');
  assert.ok(out.output.text.length > 0);
  // A second registration under a taken id is a ConflictError with its code.
  await assert.rejects(
    admin.models.register({ id: 'sdk-upload', source: { upload: true }, sha256 }),
    (err) => err instanceof ConflictError && err.code === 'model_exists',
  );
  const deleting = await admin.models.delete('sdk-upload');
  assert.ok(['draining', 'deleting'].includes(deleting.state), deleting.state);
  for (let i = 0; ; i++) {
    try {
      await admin.models.get('sdk-upload');
    } catch (err) {
      assert.ok(err instanceof NotFoundError);
      assert.equal(err.code, 'model_not_found');
      break;
    }
    assert.ok(i < 200, 'the model was not deleted');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
});

test('adapters: register a LoRA adapter by upload, with progress, use it from a function, delete it', async () => {
  const { createHash } = await import('node:crypto');
  const { readFile, mkdtemp, rm } = await import('node:fs/promises');
  const os = await import('node:os');
  const { MODEL_PATH, GENRT_BIN } = await import('./server.mjs');
  // An adapter written for SmolLM2 by the workspace's own tool (no download).
  const dir = await mkdtemp(path.join(os.tmpdir(), 'genrt-sdk-adapter-'));
  const file = path.join(dir, 'style.gguf');
  await run(path.join(path.dirname(GENRT_BIN), 'genrt-make-model'), ['--lora-of', MODEL_PATH, '--out', file]);
  const bytes = await readFile(file);
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  const admin = new Genrt({ baseURL: server.baseURL, token: await server.token('ops', ['admin']) });
  const created = await admin.models.adapters.register(MODEL_ID, { id: 'sdk-style', source: { upload: true }, sha256 });
  assert.equal(created.registration.state, 'awaiting_upload');
  assert.equal(created.reference, `${MODEL_ID}:sdk-style`);
  await admin.models.adapters.upload(MODEL_ID, 'sdk-style', bytes);
  const seen = [];
  const ready = await admin.models.adapters.waitUntilRegistered(MODEL_ID, 'sdk-style', {
    intervalMs: 50,
    onProgress: (a) => seen.push(a.registration.state),
  });
  assert.equal(ready.registration.state, 'ready', JSON.stringify(ready));
  assert.equal(ready.file.rank, 8);
  assert.ok(seen.length >= 1);
  assert.ok((await genrt.models.adapters.list(MODEL_ID)).some((a) => a.id === 'sdk-style'));
  await genrt.functions.deploy({ ...SAY, name: 'say-styled', adapters: [{ id: 'sdk-style', scale: 1 }] });
  const out = await genrt.invoke('say-styled', { who: 'Ada' });
  assert.equal(out.model, `${MODEL_ID}:sdk-style`);
  // A missing adapter is refused at deploy with the field it concerns.
  await assert.rejects(
    genrt.functions.deploy({ ...SAY, name: 'say-nothing', adapters: [{ id: 'no-such-adapter' }] }),
    (err) => err instanceof UnprocessableEntityError && err.field === 'adapters[0].id',
  );
  await admin.models.adapters.delete(MODEL_ID, 'sdk-style');
  for (let i = 0; ; i++) {
    try {
      await admin.models.adapters.get(MODEL_ID, 'sdk-style');
    } catch (err) {
      assert.ok(err instanceof NotFoundError);
      assert.equal(err.code, 'adapter_not_found');
      break;
    }
    assert.ok(i < 200, 'the adapter was not deleted');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  await rm(dir, { recursive: true, force: true });
});

test('releases: a pinned version, a split sticky per key, promotion behind a gate with the CLI, rollback', async () => {
  const def = (system, evaluation) => ({
    name: 'pinned',
    model: MODEL_ID,
    system,
    prompt: 'Say hello to {{ who }}.',
    params: { max_tokens: 8, temperature: 0 },
    ...(evaluation ? { evaluation } : {}),
  });
  await genrt.functions.deploy(def('Be brief.'));
  assert.equal((await genrt.functions.deploy(def('Answer like a pirate.'))).version, 2);
  const first = await genrt.invoke(genrt.functions.pin('pinned', 1), { who: 'Ada' });
  assert.equal(first.version, 1);
  assert.equal(genrt.functions.pin('pinned@prod', 3), 'pinned@3');
  assert.throws(() => genrt.functions.pin('pinned', 0), RangeError);

  await genrt.aliases.split('pinned', 'prod', [{ version: 1, weight: 50 }, { version: 2, weight: 50 }]);
  const sticky = await genrt.invoke('pinned@prod', { who: 'Ada' }, { splitKey: 'user-1' });
  assert.equal(sticky.alias, 'prod');
  assert.equal(sticky.split, true);
  for (let i = 0; i < 5; i++) {
    assert.equal((await genrt.invoke('pinned@prod', { who: 'Ada' }, { splitKey: 'user-1' })).version, sticky.version);
  }

  // Version 3 is version 1's prompt with an evaluation set of version 1's own answer.
  const v3 = await genrt.functions.deploy(def('Be brief.', [{ input: { who: 'Ada' }, reference: first.output.text }]));
  const env = { ...process.env, GENRT_BASE_URL: server.baseURL, GENRT_TOKEN: await server.token('acme') };
  const promote = (version) => run(process.execPath, ['dist/cli.js', 'promote', 'pinned', 'prod', String(version), '--min-rouge-l', '0.99'], { cwd: sdkRoot, env });
  await assert.rejects(promote(2), (err) => {
    assert.equal(err.code, 1);
    assert.match(err.stderr, /409 promotion_refused: version 2 scores ROUGE-L/);
    return true;
  });
  const { stdout } = await promote(v3.version);
  assert.match(stdout, /^pinned@prod → v3 \(ROUGE-L 1\.0000\)$/m);
  assert.equal((await genrt.invoke('pinned@prod', { who: 'Ada' })).version, 3);

  const back = await genrt.aliases.rollback('pinned', 'prod');
  assert.deepEqual(back.alias.versions, [{ version: 1, weight: 50 }, { version: 2, weight: 50 }]);
  const history = await genrt.aliases.history('pinned', 'prod');
  assert.deepEqual(history.map((e) => e.action), ['rollback', 'set', 'refused', 'set']);
  await assert.rejects(genrt.invoke('pinned@nope', { who: 'Ada' }), (err) => {
    assert.ok(err instanceof NotFoundError);
    assert.equal(err.code, 'alias_not_found');
    return true;
  });

  // A shadow at 100%: each call through the alias is mirrored to version 2 and compared.
  await genrt.aliases.set('pinned', 'mirrored', 1, { shadow: { version: 2, percent: 100 } });
  // One at a time: a tenant has one background place by default, and a shadow finding it
  // taken is skipped, not queued.
  let shadow;
  for (const [n, who] of ['Ann', 'Bob'].entries()) {
    assert.equal((await genrt.invoke('pinned@mirrored', { who })).version, 1);
    for (let i = 0; i < 300 && shadow?.compared !== n + 1; i++) {
      const stats = await genrt.functions.stats('pinned');
      shadow = stats.versions.find((v) => v.version === 2)?.shadow;
      if (shadow?.compared !== n + 1) await new Promise((r) => setTimeout(r, 100));
    }
  }
  assert.equal(shadow.compared, 2);
  assert.deepEqual(shadow.primary_versions, [1]);
  assert.ok(shadow.rouge_l >= 0 && shadow.rouge_l <= 1);

  // genrt-deploy --alias points an alias at each deployed version.
  const deployed = await run(process.execPath, ['dist/cli.js', '--alias', 'staging', 'examples'], { cwd: sdkRoot, env });
  assert.match(deployed.stdout, /^news-brief@staging → v1$/m);
  assert.deepEqual((await genrt.aliases.list('news-brief')).map((a) => a.alias), ['staging']);
});
