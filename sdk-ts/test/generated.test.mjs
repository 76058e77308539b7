// The committed generated types and error codes must match what the runtime describes.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ERROR_CODES } from '@genrt/sdk';
import { check } from '../scripts/generate.mjs';

const sdkRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

test('src/generated/openapi.ts matches `genrt openapi` (run `npm run generate`)', async () => {
  const { fresh, committed } = await check();
  assert.ok(committed.length > 0, 'the generated file is committed');
  assert.equal(committed, fresh);
});

test('ERROR_CODES lists exactly the codes of runtime/src/error.rs, in order', async () => {
  const source = await readFile(path.resolve(sdkRoot, '../runtime/src/error.rs'), 'utf8');
  const table = source.slice(source.indexOf('error_codes! {'));
  const codes = [...table.matchAll(/=>\s*\("([a-z0-9_]+)",\s*[A-Z_]+/g)].map((m) => m[1]);
  assert.ok(codes.length > 10, 'parsed the table');
  assert.deepEqual([...ERROR_CODES], codes);
});

test('ERROR_CODES matches the OpenAPI ErrorCode enum', async () => {
  const { execFileSync } = await import('node:child_process');
  const { genrtEnv } = await import('../scripts/generate.mjs');
  const bin = process.env.GENRT_BIN ?? path.resolve(sdkRoot, '../target/release/genrt');
  const doc = JSON.parse(execFileSync(bin, ['openapi'], { encoding: 'utf8', env: genrtEnv() }));
  const schema = doc.components?.schemas?.ErrorCode;
  assert.ok(Array.isArray(schema?.enum), 'the OpenAPI document has an ErrorCode enum');
  assert.deepEqual([...ERROR_CODES].sort(), [...schema.enum].sort());
});
