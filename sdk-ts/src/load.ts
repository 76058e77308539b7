// Finding and loading function definitions from a folder, for `genrt-deploy`.
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { FunctionDefinition } from './types.js';

const EXTENSIONS = new Set(['.ts', '.mts', '.cts', '.js', '.mjs', '.cjs', '.json']);

export interface LoadedDefinition {
  file: string;
  definition: FunctionDefinition;
}

/** Every definition in `dir` (not recursive), in file name order. */
export async function loadDefinitions(dir: string): Promise<LoadedDefinition[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  const files = entries
    .filter((e) => e.isFile() && EXTENSIONS.has(path.extname(e.name)) && !/\.d\.[cm]?ts$/.test(e.name))
    .map((e) => path.resolve(dir, e.name))
    .sort();
  const loaded: LoadedDefinition[] = [];
  for (const file of files) {
    for (const definition of definitionsOf(await loadFile(file), file)) loaded.push({ file, definition });
  }
  return loaded;
}

async function loadFile(file: string): Promise<unknown> {
  const ext = path.extname(file);
  if (ext === '.json') return JSON.parse(await readFile(file, 'utf8'));
  const url = pathToFileURL(file).href;
  if (ext === '.ts' || ext === '.mts' || ext === '.cts') {
    // tsx compiles TypeScript on the fly (esbuild), so definitions need no build step. It is
    // loaded only here, so SDK users who never deploy .ts files never load it.
    const { tsImport } = await import('tsx/esm/api');
    return tsImport(url, import.meta.url);
  }
  return import(url);
}

/** A module's definitions: its default export (one or an array), else every export that looks like one. */
function definitionsOf(module: unknown, file: string): FunctionDefinition[] {
  const mod = module as Record<string, unknown>;
  if (file.endsWith('.json')) return toArray(module, file);
  // A CommonJS module imported from ESM, or through tsx, can nest its exports in `default`
  // once more; unwrap until the value is a definition.
  let value: unknown = mod.default;
  while (value && typeof value === 'object' && !isDefinition(value) && 'default' in value) {
    value = (value as { default: unknown }).default;
  }
  if (value !== undefined) return toArray(value, file);
  const named = Object.values(mod).filter(isDefinition);
  if (named.length === 0) throw new Error(`${file}: no function definition exported`);
  return named;
}

function toArray(value: unknown, file: string): FunctionDefinition[] {
  const list = Array.isArray(value) ? value : [value];
  for (const item of list) {
    if (!isDefinition(item)) throw new Error(`${file}: not a function definition (needs at least \`name\` and \`prompt\`)`);
  }
  return list as FunctionDefinition[];
}

function isDefinition(value: unknown): value is FunctionDefinition {
  return !!value && typeof value === 'object' && typeof (value as { name?: unknown }).name === 'string' && typeof (value as { prompt?: unknown }).prompt === 'string';
}
