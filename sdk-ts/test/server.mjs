// Starts a real `genrt serve` for tests: a free port, a temporary data directory (SQLite), a
// generated JWT secret and a temporary config with the real model. One server per test file
// (node --test runs each file in its own process); `stop()` belongs in an `after` hook so the
// server dies even when tests fail, and an exit hook kills it if the process ends first.
// Reused by the OpenAI-compatibility tests (`/openai/v1`), so keep it free of SDK specifics.
import { spawn, execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

/**
 * The environment for genrt: without GENRT_* variables, so that a developer's configuration
 * (GENRT_DATABASE_URL, GENRT_SERVER__PORT...) cannot reach the throwaway test server.
 */
export function genrtEnv() {
  return Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('GENRT_')));
}

const sdkRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const repoRoot = path.resolve(sdkRoot, '..');

export const GENRT_BIN = process.env.GENRT_BIN ?? path.join(repoRoot, 'target/release/genrt');
export const MODEL_PATH = process.env.GENRT_MODEL ?? path.join(repoRoot, 'models/SmolLM2-135M-Instruct.Q4_1.gguf');
export const MODEL_ID = 'smollm2-135m';
/** The fashion LoRA adapter on SmolLM2 (`make models` writes it). */
export const FASHION_ADAPTER_PATH = path.join(repoRoot, 'models/smollm2-135m-fashion.lora.gguf');

/** A port nobody listens on right now. */
export async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function config({ dataDir, port, secret, slots, extra }) {
  // threads = 1: with more, generation stalled on the shared 2-core machine the tests run on.
  const model = (id, s, more = '') => `
[[models]]
id = "${id}"
path = ${JSON.stringify(MODEL_PATH)}
n_ctx = 2048
slots = ${s}
threads = 1
min_replicas = 0
max_replicas = 1
${more}`;
  return `data_dir = ${JSON.stringify(dataDir)}

[server]
host = "127.0.0.1"
port = ${port}
workers = 2
shutdown_timeout_s = 2

[auth]
jwt_secret = "${secret}"

# Test servers run beside each other: each gets its own metrics port.
[telemetry]
metrics_listen = "127.0.0.1:0"

[queue]
concurrency = ${slots}
poll_ms = 100
${extra ?? ''}
${model(MODEL_ID, slots, 'embeddings = true')}
# A second model id on the same file (not configured for embeddings).
${model('smollm2-135m-fashion', 1)}
# The product-description example routes fashion products to this adapter.
[[adapters]]
model = "${MODEL_ID}"
id = "fashion"
path = ${JSON.stringify(FASHION_ADAPTER_PATH)}`;
}

/**
 * Starts genrt and resolves once /readyz answers 200.
 * @param {{ slots?: number, extraConfig?: string, readyTimeoutMs?: number }} [options]
 */
export async function startServer(options = {}) {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'genrt-sdk-test-'));
  const port = await freePort();
  const secret = randomBytes(24).toString('hex');
  const configPath = path.join(dataDir, 'genrt.toml');
  await writeFile(configPath, config({ dataDir, port, secret, slots: options.slots ?? 4, extra: options.extraConfig }));
  const logPath = path.join(dataDir, 'genrt.log');
  const log = createWriteStream(logPath);
  const child = spawn(GENRT_BIN, ['serve', '--config', configPath], {
    cwd: dataDir,
    env: { ...genrtEnv(), RUST_LOG: process.env.RUST_LOG ?? 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.pipe(log);
  child.stderr.pipe(log);
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);

  const baseURL = `http://127.0.0.1:${port}`;
  const server = {
    baseURL,
    port,
    dataDir,
    configPath,
    jwtSecret: secret,
    process: child,
    /** Mints a JWT with `genrt token`; default scopes are every tenant scope but admin. */
    async token(tenant, scopes = []) {
      const args = ['token', '--config', configPath, '--tenant', tenant, '--jwt-secret', secret];
      for (const scope of scopes) args.push('--scope', scope);
      const { stdout } = await promisify(execFile)(GENRT_BIN, args, { cwd: dataDir, env: genrtEnv() });
      return stdout.trim();
    },
    async logs() {
      return readFile(logPath, 'utf8').catch(() => '');
    },
    /** SIGTERM, then SIGKILL after 5 s; removes the data directory. Safe to call twice. */
    async stop() {
      process.removeListener('exit', killOnExit);
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
      log.end();
      await rm(dataDir, { recursive: true, force: true });
    },
  };

  const deadline = Date.now() + (options.readyTimeoutMs ?? 30_000);
  for (;;) {
    const early = await Promise.race([exited, new Promise((r) => setTimeout(r, 100, undefined))]);
    if (early) {
      const logs = await server.logs();
      await server.stop();
      throw new Error(`genrt exited during start-up (${JSON.stringify(early)}):\n${logs}`);
    }
    try {
      const res = await fetch(`${baseURL}/readyz`);
      if (res.ok) return server;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      const logs = await server.logs();
      await server.stop();
      throw new Error(`genrt was not ready within the timeout:\n${logs}`);
    }
  }
}
