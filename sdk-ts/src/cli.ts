#!/usr/bin/env node
// genrt-deploy <dir>: deploys every function definition in a folder (.ts/.mts/.cts, .js/.mjs/
// .cjs, .json) and prints `name → vN (created|unchanged)`. The server decides whether a
// version is new (it compares digests), so running it on every release is safe. With
// `--alias staging`, each deployed version becomes that alias's target.
// genrt-deploy promote <function> <alias> <version>: moves an alias, optionally gated on the
// function's evaluation set; a refused promotion exits 1 and prints both scores.
import { parseArgs } from 'node:util';
import { Genrt } from './client.js';
import { APIError } from './errors.js';
import { loadDefinitions } from './load.js';

const USAGE = `usage: genrt-deploy [options] <dir>
       genrt-deploy promote [options] <function> <alias> <version>

Deploys every function definition in <dir>: .ts/.mts/.cts (default export of
defineFunction), .js/.mjs/.cjs and .json files. \`promote\` points an alias of a
function at a version, after a gate when one is given.

options:
  --base-url <url>       default: $GENRT_BASE_URL, else http://127.0.0.1:8080
  --api-key <key>        default: $GENRT_API_KEY
  --token <jwt>          default: $GENRT_TOKEN
  --alias <name>         deploy: point this alias at each deployed version
  --dry-run              deploy: load and list the definitions, deploy nothing
  --min-rouge-l <score>  promote: the version must score at least this
  --max-drop <score>     promote: and no worse than the alias's current version by more
  -h, --help`;

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      'base-url': { type: 'string' },
      'api-key': { type: 'string' },
      token: { type: 'string' },
      'dry-run': { type: 'boolean' },
      alias: { type: 'string' },
      'min-rouge-l': { type: 'string' },
      'max-drop': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const connect = () => new Genrt({ baseURL: values['base-url'], apiKey: values['api-key'], token: values.token });
  if (positionals[0] === 'promote') {
    return promote(connect(), positionals.slice(1), values['min-rouge-l'], values['max-drop']);
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
  const genrt = connect();
  let failed = 0;
  for (const { definition, file } of definitions) {
    try {
      const deployed = await genrt.functions.deploy(definition);
      console.log(`${deployed.name} → v${deployed.version} (${deployed.created ? 'created' : 'unchanged'})`);
      if (values.alias !== undefined) {
        await genrt.aliases.set(deployed.name, values.alias, deployed.version);
        console.log(`${deployed.name}@${values.alias} → v${deployed.version}`);
      }
    } catch (err) {
      failed++;
      console.error(`${definition.name} (${file}): ${describe(err)}`);
    }
  }
  return failed === 0 ? 0 : 1;
}

async function promote(genrt: Genrt, args: string[], minRougeL?: string, maxDrop?: string): Promise<number> {
  const [name, alias, version] = args;
  const n = Number(version);
  if (args.length !== 3 || !Number.isInteger(n) || n < 1) {
    console.error(USAGE);
    return 2;
  }
  const score = (flag: string, text?: string) => {
    if (text === undefined) return undefined;
    const value = Number(text);
    if (!Number.isFinite(value)) throw new Error(`--${flag} takes a number, not ${text}`);
    return value;
  };
  const min = score('min-rouge-l', minRougeL);
  const drop = score('max-drop', maxDrop);
  const gate =
    min === undefined && drop === undefined
      ? undefined
      : { min_rouge_l: min, ...(drop === undefined ? {} : { not_worse_than: 'current', max_drop: drop }) };
  try {
    const changed = await genrt.aliases.set(name!, alias!, n, { gate });
    const scores = changed.event.gate as { candidates?: { version: number; rouge_l: number }[] } | null | undefined;
    const scored = scores?.candidates?.map((c) => ` (ROUGE-L ${c.rouge_l.toFixed(4)})`).join('') ?? '';
    console.log(`${name}@${alias} → v${n}${scored}`);
    return 0;
  } catch (err) {
    console.error(`${name}@${alias} → v${n} refused: ${describe(err)}`);
    return 1;
  }
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
