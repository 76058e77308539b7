// The console in a real browser: Debian's Chromium, driven by playwright-core (no browser
// download), against a real `genrt serve` on SQLite with the real SmolLM2 model. Every page
// is checked by axe-core (no serious or critical violation) and photographed into
// target/console-screenshots/ for a person to look at after `make test`.
//
// CHROMIUM overrides the browser (default /usr/bin/chromium); GENRT_BIN the server binary.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { AxeBuilder } from '@axe-core/playwright';
import { startServer } from '../../sdk-ts/test/server.mjs';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SHOTS = path.join(repoRoot, 'target/console-screenshots');
const EXAMPLES = path.join(repoRoot, 'functions/examples');
const MODEL = 'smollm2-135m';

let server;
let browser;
let tenantToken;
let adminToken;
let limitedKey;
/** Every request any page made, to check that data only ever comes from /v1 with a credential. */
const requests = [];
/** Uncaught errors and Content-Security-Policy refusals in any page. */
const pageErrors = [];

async function api(method, route, token, body) {
  const res = await fetch(`${server.baseURL}${route}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

/** A token like `genrt token` mints, but expired an hour ago (signed with the server's secret). */
function expired(token) {
  const [header, payload] = token.split('.');
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString());
  const now = Math.floor(Date.now() / 1000);
  const body = Buffer.from(JSON.stringify({ ...claims, iat: now - 7200, exp: now - 3600 })).toString('base64url');
  const signature = createHmac('sha256', server.jwtSecret).update(`${header}.${body}`).digest('base64url');
  return `${header}.${body}.${signature}`;
}

async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on('request', (r) => requests.push({ url: r.url(), method: r.method(), auth: r.headers().authorization }));
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('console', (m) => {
    if (/Content.Security.Policy/i.test(m.text())) pageErrors.push(`CSP: ${m.text()}`);
  });
  return page;
}

async function signIn(page, credential, { expectRefusal = false } = {}) {
  await page.goto(`${server.baseURL}/console/`);
  await page.getByLabel('API key or token').fill(credential);
  await page.getByRole('button', { name: 'Sign in' }).click();
  // Done once the shell shows whom the credential belongs to (or the refusal).
  await (expectRefusal ? page.getByTestId('signin-error') : page.getByTestId('tenant')).waitFor();
}

/** axe-core on the page as it is now: no serious or critical violation. */
async function accessible(page, name) {
  const { violations } = await new AxeBuilder({ page }).withTags(['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']).analyze();
  const bad = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert.deepEqual(
    bad.map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`),
    [],
    `accessibility violations on ${name}`,
  );
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

async function visit(page, hash, ready) {
  await page.goto(`${server.baseURL}/console/${hash}`);
  try {
    await ready();
  } catch (e) {
    await shot(page, `failed-${hash.replace(/\W+/g, '-')}`).catch(() => {});
    const text = await page.locator('body').innerText().catch(() => '<unreadable>');
    throw new Error(`${hash} did not get ready: ${e.message}\npage text:\n${text}`);
  }
}

before(async () => {
  await mkdir(SHOTS, { recursive: true });
  server = await startServer({ slots: 2 });
  tenantToken = await server.token('demo');
  adminToken = await server.token('operator', ['admin']);
  for (const name of ['tagline', 'news-brief', 'product-description']) {
    const { default: definition } = await import(path.join(EXAMPLES, `${name}.json`), { with: { type: 'json' } });
    const r = await api('POST', '/v1/functions', tenantToken, definition);
    assert.equal(r.status, 201, JSON.stringify(r.body));
  }
  // A second version of tagline, so that the versions diff has something to show.
  const { default: tagline } = await import(path.join(EXAMPLES, 'tagline.json'), { with: { type: 'json' } });
  assert.equal((await api('POST', '/v1/functions', tenantToken, { ...tagline, params: { max_tokens: 24, temperature: 0.5 } })).status, 201);
  // Long enough to press stop while it runs.
  const long = {
    name: 'long-story',
    model: MODEL,
    prompt: 'Tell a very long story about {{ topic }}.',
    input_schema: { type: 'object', properties: { topic: { type: 'string' } }, required: ['topic'] },
    params: { max_tokens: 1500, ignore_eos: true, temperature: 0.8 },
  };
  assert.equal((await api('POST', '/v1/functions', tenantToken, long)).status, 201);
  // An API key that may invoke and read, but not deploy.
  const key = await api('POST', '/v1/api-keys', tenantToken, { name: 'viewer', scopes: ['functions:invoke', 'invocations:read'] });
  assert.equal(key.status, 201, JSON.stringify(key.body));
  limitedKey = key.body.secret;
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    // The tests run as root in CI, where Chromium's sandbox cannot start.
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test('the console is served with a strict CSP and a first load under 200 KB compressed', async () => {
  const index = await fetch(`${server.baseURL}/console/`, { headers: { 'Accept-Encoding': 'gzip' } });
  assert.equal(index.status, 200);
  const csp = index.headers.get('content-security-policy') ?? '';
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  assert.match(csp, /connect-src 'self'/);
  const html = await index.text();
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/, 'no inline script');
  // What a first load fetches: the page and the files it names, as sent (gzip).
  const assets = [...html.matchAll(/(?:src|href)="(\/console\/assets\/[^"]+)"/g)].map((m) => m[1]);
  assert.ok(assets.length >= 2, html);
  let total = Number(index.headers.get('content-length'));
  for (const asset of assets) {
    const res = await fetch(`${server.baseURL}${asset}`, { headers: { 'Accept-Encoding': 'gzip' } });
    assert.equal(res.status, 200, asset);
    assert.equal(res.headers.get('content-encoding'), 'gzip', asset);
    assert.match(res.headers.get('cache-control') ?? '', /immutable/);
    total += Number(res.headers.get('content-length'));
    await res.arrayBuffer();
  }
  assert.ok(total > 1000 && total < 200 * 1024, `first load ${total} bytes compressed`);
});

test('a wrong or expired credential gets a clear sign-in error', async () => {
  const page = await newPage();
  await signIn(page, 'grt_not-a-real-key', { expectRefusal: true });
  const error = page.getByTestId('signin-error');
  await error.waitFor();
  assert.match(await error.innerText(), /refused/i);
  assert.match(await error.innerText(), /401/);
  await accessible(page, 'sign-in');
  await shot(page, '01-sign-in-error');

  await signIn(page, expired(tenantToken), { expectRefusal: true });
  await page.getByTestId('signin-error').getByText('token_expired').waitFor();
  assert.match(await page.getByTestId('signin-error').innerText(), /expired/i);
  await page.context().close();
});

test('a tenant signs in, runs tagline in the playground, stops a long generation and finds its invocations', async () => {
  const page = await newPage();
  await signIn(page, tenantToken);
  await page.getByTestId('tenant').getByText('demo').waitFor();

  // Functions: the examples are listed.
  for (const name of ['tagline', 'news-brief', 'product-description']) {
    await page.locator(`tr[data-function="${name}"]`).waitFor();
  }
  assert.equal(await page.getByTestId('deploy-button').count(), 1);
  await accessible(page, 'functions');
  await shot(page, '02-functions');

  // A function's versions, side by side.
  await visit(page, '#/functions/tagline', () => page.getByTestId('version-diff').waitFor());
  assert.match(await page.getByTestId('version-diff').innerText(), /max_tokens/);
  assert.ok((await page.locator('.diff-changed').count()) > 0);
  await accessible(page, 'function detail');
  await shot(page, '03-function-detail');

  // The editor: a refusal names its field; text that is not JSON never leaves the page.
  await visit(page, '#/deploy/tagline', () => page.waitForFunction(() => document.querySelector('#definition')?.value.includes('tagline')));
  const definition = JSON.parse(await page.locator('#definition').inputValue());
  await page.locator('#definition').fill(JSON.stringify({ ...definition, params: { ...definition.params, temperature: 9 } }, null, 2));
  await page.getByRole('button', { name: 'Deploy' }).click();
  await page.getByTestId('deploy-error-field').waitFor();
  assert.match(await page.getByTestId('deploy-error-field').innerText(), /temperature/);
  assert.match(await page.getByTestId('deploy-error').innerText(), /422/);
  const deploysBefore = requests.filter((r) => r.method === 'POST' && r.url.endsWith('/v1/functions')).length;
  await page.locator('#definition').fill('{"name": "tagline",');
  await page.getByRole('button', { name: 'Deploy' }).click();
  await page.getByText(/The definition is not JSON/).waitFor();
  assert.equal(requests.filter((r) => r.method === 'POST' && r.url.endsWith('/v1/functions')).length, deploysBefore);
  await accessible(page, 'deploy editor');
  await shot(page, '03b-deploy-editor');

  // Usage before the run.
  await visit(page, '#/usage', () => page.getByTestId('tokens-chart').waitFor());
  const tokensBefore = Number(await page.getByTestId('tokens-chart').getAttribute('data-total'));

  // Playground: tokens arrive one update at a time before the final text.
  await visit(page, '#/playground/tagline', () => page.getByLabel(/^product/).waitFor());
  await page.getByLabel(/^product/).fill('a reusable water bottle');
  await page.evaluate(() => {
    const seen = [];
    window.__outputs = seen;
    const output = document.querySelector('[data-testid=output]');
    new MutationObserver(() => {
      seen.push({ text: output.textContent, final: document.querySelector('[data-testid=result]') !== null });
    }).observe(output, { childList: true, subtree: true, characterData: true });
  });
  await page.getByTestId('run').click();
  await page.getByTestId('result').waitFor({ timeout: 60_000 });
  const outputs = await page.evaluate(() => window.__outputs);
  const before = outputs.filter((o) => !o.final && o.text && o.text !== 'Nothing yet.');
  assert.ok(before.length >= 2, `token updates before the final text: ${JSON.stringify(outputs)}`);
  assert.ok(Number(await page.getByTestId('token-updates').innerText()) >= 2);
  const text = await page.getByTestId('output').innerText();
  const id = (await page.getByTestId('invocation-link').innerText()).trim();
  const record = await api('GET', `/v1/invocations/${id}`, tenantToken);
  assert.equal(record.status, 200);
  assert.equal(record.body.output.text.trim(), text.trim());
  await accessible(page, 'playground');
  await shot(page, '04-playground');

  // Stop: a second tab watches the model's slots while the first generates.
  const watcher = await newPage();
  await signIn(watcher, tenantToken);
  await visit(watcher, '#/models', () => watcher.locator(`[data-model="${MODEL}"]`).waitFor());
  const busy = watcher.locator(`[data-model="${MODEL}"] [data-testid=busy-slots]`);
  await visit(page, '#/playground/long-story', () => page.getByLabel(/^topic/).waitFor());
  await page.getByLabel(/^topic/).fill('a lighthouse keeper');
  await page.getByTestId('run').click();
  await page.waitForFunction(() => Number(document.querySelector('[data-testid=token-updates]').textContent) >= 3, null, { timeout: 60_000 });
  await watcher.waitForFunction((sel) => Number(document.querySelector(sel)?.textContent) >= 1, `[data-model="${MODEL}"] [data-testid=busy-slots]`, { timeout: 10_000 });
  await accessible(watcher, 'models');
  await shot(watcher, '05-models-busy');
  await page.getByTestId('stop').click();
  await page.getByTestId('stopped').waitFor();
  await watcher.waitForFunction((sel) => Number(document.querySelector(sel)?.textContent) === 0, `[data-model="${MODEL}"] [data-testid=busy-slots]`, { timeout: 10_000 });
  assert.equal(await busy.innerText(), '0');
  await shot(watcher, '06-models-freed');
  await watcher.context().close();

  // The invocation in the list, then its detail.
  await visit(page, '#/invocations', () => page.locator(`tr[data-invocation="${id}"]`).waitFor());
  await accessible(page, 'invocations');
  await shot(page, '07-invocations');
  // Auto-refresh: an invocation made elsewhere appears without a reload.
  const other = await api('POST', '/v1/functions/tagline/invoke', tenantToken, { input: { product: 'a bicycle bell' }, params: { max_tokens: 4 } });
  assert.equal(other.status, 200, JSON.stringify(other.body));
  await page.locator(`tr[data-invocation="${other.body.invocation_id}"]`).waitFor({ timeout: 15_000 });
  await page.locator(`tr[data-invocation="${id}"] a`).first().click();
  await page.getByTestId('invocation-detail').waitFor();
  assert.equal((await page.getByTestId('invocation-output').innerText()).trim(), text.trim());
  await accessible(page, 'invocation detail');
  await shot(page, '08-invocation-detail');

  // A batch: its progress, then its results.
  const batch = await api('POST', '/v1/functions/tagline/batches', tenantToken, { inputs: [{ product: 'a kettle' }, { product: 'a lamp' }], params: { max_tokens: 4 } });
  assert.equal(batch.status, 202, JSON.stringify(batch.body));
  await visit(page, `#/batches/${batch.body.batch_id}`, () => page.getByText('2 of 2 done').waitFor({ timeout: 60_000 }));
  await page.waitForFunction(() => document.querySelectorAll('table tbody tr .badge-succeeded').length === 2, null, { timeout: 15_000 });
  await accessible(page, 'batch');
  await shot(page, '08b-batch');

  // The usage chart moved.
  await visit(page, '#/usage', () => page.getByTestId('tokens-chart').waitFor());
  await page.waitForFunction(
    (n) => Number(document.querySelector('[data-testid=tokens-chart]').getAttribute('data-total')) > n,
    tokensBefore,
    { timeout: 20_000 },
  );
  await accessible(page, 'usage');
  await shot(page, '09-usage');

  // Webhooks: a trigger's URL is listed; the signing secret rotates with an overlap.
  const trigger = await api('POST', '/v1/functions/tagline/triggers', tenantToken, {});
  assert.equal(trigger.status, 201, JSON.stringify(trigger.body));
  await visit(page, '#/webhooks', () => page.getByText(trigger.body.url).waitFor());
  const secretsBefore = await page.locator('ul.secrets li').count();
  page.once('dialog', (d) => d.accept());
  await page.getByRole('button', { name: 'Rotate secret' }).click();
  await page.getByText(/Rotated; the previous secret keeps signing/).waitFor();
  await page.waitForFunction((n) => document.querySelectorAll('ul.secrets li').length === n + 1, secretsBefore);
  await accessible(page, 'webhooks');
  await shot(page, '10-webhooks');
  await page.context().close();
});

test('a credential without functions:write sees no deploy button, and a deploy shows the 403', async () => {
  const page = await newPage();
  await signIn(page, limitedKey);
  await page.locator('tr[data-function="tagline"]').waitFor();
  assert.equal(await page.getByTestId('deploy-button').count(), 0);
  const sections = await page.getByRole('navigation', { name: 'Sections' }).getByRole('link').allInnerTexts();
  assert.deepEqual(sections, ['Functions', 'Playground', 'Invocations', 'Usage', 'Models', 'Webhooks']);
  await visit(page, '#/deploy', () => page.getByLabel('Definition (JSON)').waitFor());
  await page.getByRole('button', { name: 'Deploy' }).click();
  const error = page.getByTestId('deploy-error');
  await error.waitFor();
  assert.match(await error.innerText(), /403/);
  assert.match(await error.innerText(), /insufficient_scope/);
  assert.match(await error.innerText(), /functions:write/);
  await accessible(page, 'deploy refused');
  await shot(page, '11-deploy-refused');
  await page.context().close();
});

test('an admin sees the tenants and their limits', async () => {
  const page = await newPage();
  await signIn(page, adminToken);
  // An `admin`-only credential is offered what it may use: models and the tenants.
  const sections = await page.getByRole('navigation', { name: 'Sections' }).getByRole('link').allInnerTexts();
  assert.deepEqual(sections, ['Models', 'Admin']);
  await page.getByRole('link', { name: 'Admin' }).click();
  await page.getByRole('rowheader', { name: 'demo' }).waitFor();
  await page.getByRole('button', { name: 'Edit demo' }).click();
  await page.getByLabel(/Monthly token budget/).fill('5000000');
  await page.getByRole('button', { name: 'Save limits' }).click();
  await page.getByText('Saved the limits of demo.').waitFor();
  const tenant = await api('GET', '/v1/admin/tenants/demo', adminToken);
  assert.equal(tenant.body.monthly_token_budget, 5000000);
  await accessible(page, 'admin');
  await shot(page, '12-admin');
  await page.context().close();
});

test('the invocation list pages back and keeps every row, once, while new ones arrive', async () => {
  // More than one page (50) of one function's invocations.
  const inputs = Array.from({ length: 55 }, (_, i) => ({ product: `item ${i}` }));
  const batch = await api('POST', '/v1/functions/tagline/batches', tenantToken, { inputs, params: { max_tokens: 1 } });
  assert.equal(batch.status, 202, JSON.stringify(batch.body));
  for (let i = 0; ; i++) {
    const b = await api('GET', `/v1/batches/${batch.body.batch_id}`, tenantToken);
    if (b.body.status === 'completed') break;
    assert.ok(i < 240, JSON.stringify(b.body));
    await new Promise((r) => setTimeout(r, 500));
  }
  const total = async () => {
    let n = 0;
    let cursor;
    do {
      const page = await api('GET', `/v1/invocations?function=tagline&limit=200${cursor ? `&cursor=${cursor}` : ''}`, tenantToken);
      n += page.body.invocations.length;
      cursor = page.body.next_cursor;
    } while (cursor);
    return n;
  };
  const page = await newPage();
  await signIn(page, tenantToken);
  const rows = page.locator('table[data-testid=invocations] tbody tr');
  await visit(page, '#/invocations?function=tagline', () => page.getByRole('button', { name: 'Load older' }).waitFor());
  assert.equal(await rows.count(), 50);
  await page.getByRole('button', { name: 'Load older' }).click();
  const all = await total();
  await page.waitForFunction((n) => document.querySelectorAll('table[data-testid=invocations] tbody tr').length === n, all);
  // Three new ones arrive; the auto-refresh shows them on top and drops nothing.
  for (let i = 0; i < 3; i++) {
    assert.equal((await api('POST', '/v1/functions/tagline/invoke', tenantToken, { input: { product: `new ${i}` }, params: { max_tokens: 1 } })).status, 200);
  }
  await page.waitForFunction((n) => document.querySelectorAll('table[data-testid=invocations] tbody tr').length === n, all + 3, { timeout: 15_000 });
  const ids = await page.locator('table[data-testid=invocations] tbody tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.invocation));
  assert.equal(new Set(ids).size, ids.length, 'no row twice');
  assert.deepEqual(ids, [...ids].sort().reverse(), 'newest first');
  await page.context().close();
});

test('every data call goes through /v1 with the credential; the console serves only files', async () => {
  const origin = new URL(server.baseURL).origin;
  const ours = requests.filter((r) => new URL(r.url).origin === origin);
  assert.ok(ours.length > 20, `${ours.length} requests`);
  const strays = ours.filter((r) => {
    const { pathname } = new URL(r.url);
    if (pathname.startsWith('/console')) return r.method !== 'GET';
    if (pathname === '/healthz') return false;
    return !pathname.startsWith('/v1/') || !/^Bearer \S+$/.test(r.auth ?? '');
  });
  assert.deepEqual(strays, []);
  assert.deepEqual(pageErrors, []);
  // Nothing under /console answers with data, with or without a credential.
  for (const route of ['/console/v1/functions', '/console/api/functions', '/console/..%2Fv1%2Ffunctions']) {
    const res = await fetch(`${server.baseURL}${route}`, { headers: { Authorization: `Bearer ${tenantToken}` } });
    assert.equal(res.status, 404, route);
    assert.doesNotMatch(res.headers.get('content-type') ?? '', /json/, route);
  }
});

test('on a phone-sized screen nothing overflows, and the keyboard reaches every section', async () => {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await signIn(page, tenantToken);
  for (const [hash, ready] of [
    ['#/functions', () => page.locator('tr[data-function="tagline"]').waitFor()],
    ['#/playground/tagline', () => page.getByLabel(/^product/).waitFor()],
    ['#/models', () => page.locator(`[data-model="${MODEL}"]`).waitFor()],
  ]) {
    await visit(page, hash, ready);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `${hash} is ${overflow}px wider than the phone`);
    await shot(page, `phone-${hash.replace(/\W+/g, '-').replace(/^-|-$/g, '')}`);
  }
  // Keyboard only: the skip link first, then the sections; Enter follows a link.
  await visit(page, '#/functions', () => page.locator('tr[data-function="tagline"]').waitFor());
  await page.reload();
  await page.locator('tr[data-function="tagline"]').waitFor();
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'Skip to content');
  let reached = false;
  for (let i = 0; i < 12 && !reached; i++) {
    await page.keyboard.press('Tab');
    reached = (await page.evaluate(() => document.activeElement?.textContent)) === 'Invocations';
  }
  assert.ok(reached, 'Tab reaches the Invocations link');
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'Invocations' }).waitFor();
  await context.close();
  assert.deepEqual(pageErrors, []);
});

test('a lost connection shows the reconnecting state, and the page recovers when it is back', async () => {
  const page = await newPage();
  await signIn(page, tenantToken);
  await visit(page, '#/models', () => page.locator(`[data-model="${MODEL}"]`).waitFor());
  await page.context().setOffline(true);
  const banner = page.getByTestId('reconnecting');
  await banner.waitFor({ timeout: 15_000 });
  await page.context().setOffline(false);
  await banner.waitFor({ state: 'detached', timeout: 30_000 });
  // Signed in still, and live again.
  await page.getByTestId('tenant').waitFor();
  const before = requests.length;
  await page.waitForTimeout(2500);
  assert.ok(requests.slice(before).some((r) => r.url.endsWith('/v1/models')), 'the models page polls again');
  await page.context().close();
});

// Last: it takes the server away.
test('a server that goes away shows a reconnecting state, not a blank page', async () => {
  const page = await newPage();
  await signIn(page, tenantToken);
  await visit(page, '#/models', () => page.locator(`[data-model="${MODEL}"]`).waitFor());
  await server.stop();
  const banner = page.getByTestId('reconnecting');
  await banner.waitFor({ timeout: 15_000 });
  assert.match(await banner.innerText(), /Reconnecting/);
  // What was shown stays.
  assert.equal(await page.locator(`[data-model="${MODEL}"]`).count(), 1);
  await shot(page, '13-reconnecting');
  await page.context().close();
  assert.deepEqual(pageErrors, []);
});
