// The examples exist twice: as JSON in functions/examples (deployed by `make run`) and as
// TypeScript in sdk-ts/examples. Each pair must stay deep-equal.
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { tsImport } from 'tsx/esm/api';

const sdkRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const jsonDir = path.resolve(sdkRoot, '../functions/examples');
const tsDir = path.join(sdkRoot, 'examples');

const jsonFiles = (await readdir(jsonDir)).filter((f) => f.endsWith('.json')).sort();
const tsFiles = (await readdir(tsDir)).filter((f) => f.endsWith('.ts')).sort();

test('every JSON example has a TypeScript twin and vice versa', () => {
  assert.ok(jsonFiles.length > 0);
  assert.deepEqual(tsFiles.map((f) => f.replace(/\.ts$/, '')), jsonFiles.map((f) => f.replace(/\.json$/, '')));
});

for (const file of jsonFiles) {
  const name = file.replace(/\.json$/, '');
  test(`examples/${name}.ts equals functions/examples/${file}`, async () => {
    const json = JSON.parse(await readFile(path.join(jsonDir, file), 'utf8'));
    const mod = await tsImport(pathToFileURL(path.join(tsDir, `${name}.ts`)).href, import.meta.url);
    assert.deepStrictEqual(JSON.parse(JSON.stringify(mod.default)), json);
    assert.deepStrictEqual(Object.keys(mod.default).sort(), Object.keys(json).sort());
  });
}
