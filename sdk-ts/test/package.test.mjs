// Both builds load in Node under the package's own name (self-reference through `exports`):
// ESM through import, CommonJS through require.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { test } from 'node:test';

const require = createRequire(import.meta.url);
const EXPORTS = ['Genrt', 'defineFunction', 'GenrtError', 'APIError', 'RateLimitError', 'NotFoundError', 'APITimeoutError', 'APIUserAbortError', 'InvocationStream', 'AsyncInvocation', 'ERROR_CODES', 'VERSION'];

function check(sdk) {
  for (const name of EXPORTS) assert.ok(sdk[name] !== undefined, `${name} is exported`);
  const genrt = new sdk.Genrt({ baseURL: 'http://example.invalid/', apiKey: 'k' });
  assert.equal(genrt.baseURL, 'http://example.invalid');
  assert.equal(typeof genrt.functions.deploy, 'function');
  assert.equal(typeof genrt.webhooks.verify, 'function');
  const err = sdk.APIError.generate(429, { error: { code: 'rate_limited', message: 'slow down' } }, undefined, new Headers());
  assert.ok(err instanceof sdk.RateLimitError && err instanceof sdk.APIError && err instanceof sdk.GenrtError && err instanceof Error);
  const def = { name: 'x', model: 'm', prompt: 'p' };
  assert.equal(sdk.defineFunction(def), def);
}

test('ESM: import("@genrt/sdk") resolves to dist/index.js', async () => {
  const sdk = await import('@genrt/sdk');
  assert.match(import.meta.resolve('@genrt/sdk'), /\/dist\/index\.js$/);
  check(sdk);
});

test('CJS: require("@genrt/sdk") resolves to dist/index.cjs', () => {
  assert.match(require.resolve('@genrt/sdk'), /\/dist\/index\.cjs$/);
  check(require('@genrt/sdk'));
});
