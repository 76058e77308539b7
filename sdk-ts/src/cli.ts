#!/usr/bin/env node
// genrt-deploy <dir>: deploys every function definition in a folder (.ts/.mts/.cts, .js/.mjs/
// .cjs, .json) and prints `name → vN (created|unchanged)`. The server decides whether a
// version is new (it compares digests), so running it on every release is safe.
import { parseArgs } from 'node:util';
import { Genrt } from './client.js';
import { APIError } from './errors.js';
import { loadDefinitions } from './load.js';

const USAGE = `usage: genrt-deploy [options] <dir>

Deploys every function definition in <dir>: .ts/.mts/.cts (default export of
defineFunction), .js/.mjs/.cjs and .json files.

options:
  --base-url <url>   default: $GENRT_BASE_URL, else http://127.0.0.1:8080
  --api-key <key>    default: $GENRT_API_KEY
  --token <jwt>      default: $GENRT_TOKEN
  --dry-run          load and list the definitions, deploy nothing
  -h, --help`;

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      'base-url': { type: 'string' },
      'api-key': { type: 'string' },
      token: { type: 'string' },
      'dry-run': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (positionals.length !== 1) {
    console.error(USAGE);
    return 2;
  }
  const definitions = await loadDefinitions(positionals[0]!);
  if (definitions.length === 0) {
    console.error(`genrt-deploy: no function definitions in ${positionals[0]}`);
    return 1;
  }
  if (values['dry-run']) {
    for (const { definition, file } of definitions) console.log(`${definition.name} (${file})`);
    return 0;
  }
  const genrt = new Genrt({ baseURL: values['base-url'], apiKey: values['api-key'], token: values.token });
  let failed = 0;
  for (const { definition, file } of definitions) {
    try {
      const deployed = await genrt.functions.deploy(definition);
      console.log(`${deployed.name} → v${deployed.version} (${deployed.created ? 'created' : 'unchanged'})`);
    } catch (err) {
      failed++;
      console.error(`${definition.name} (${file}): ${describe(err)}`);
    }
  }
  return failed === 0 ? 0 : 1;
}

function describe(err: unknown): string {
  if (err instanceof APIError) {
    // The message already reads `401 invalid_token: ...`.
    return `${err.message}${err.field ? ` (field: ${err.field})` : ''}${err.requestId ? ` [request ${err.requestId}]` : ''}`;
  }
  return err instanceof Error ? err.message : String(err);
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    console.error(`genrt-deploy: ${describe(err)}`);
    process.exitCode = 1;
  },
);
