// The client: one object holding the connection settings, with a method per kind of call and
// a property per resource.
import { randomUUID } from 'node:crypto';
import { APIClient, type ClientOptions, type RequestOptions } from './core.js';
import type { GenrtFunction, InputOf } from './define.js';
import { ApiKeys, Models, Tenants, Triggers, Usage } from './resources/admin.js';
import { Batches } from './resources/batches.js';
import { Aliases } from './resources/aliases.js';
import { Functions } from './resources/functions.js';
import { AsyncInvocation, Invocations } from './resources/invocations.js';
import { Webhooks } from './resources/webhooks.js';
import { InvocationStream } from './streaming.js';
import type { AsyncAccepted, InvokeResponse, Params, WebhookSpec } from './types.js';

/** A function named by string, or a definition from `defineFunction` (which types its input). */
export type FunctionRef = string | GenrtFunction<any>;

export interface InvokeOptions extends RequestOptions {
  /** Overrides the function's generation parameters for this call. */
  params?: Params;
  /**
   * Sent as `Genrt-Split-Key`: who the call serves (an end user's id), so that an alias
   * splitting traffic between versions keeps that user on one version.
   */
  splitKey?: string;
}

export interface InvokeAsyncOptions extends InvokeOptions {
  /** Where to announce the result, instead of the function's own webhook. */
  webhook?: WebhookSpec;
  /**
   * Makes retries (the SDK's, or yours) return the same invocation instead of queueing
   * another. Generated when absent, so the SDK's own retries can never duplicate work.
   */
  idempotencyKey?: string;
}

export class Genrt {
  readonly functions: Functions;
  /** Aliases of functions' versions: `set`, `split`, `rollback`, `history`. */
  readonly aliases: Aliases;
  readonly invocations: Invocations;
  readonly batches: Batches;
  readonly usage: Usage;
  readonly models: Models;
  readonly webhooks: Webhooks;
  readonly apiKeys: ApiKeys;
  readonly triggers: Triggers;
  /** Operator endpoints (`admin` scope). */
  readonly admin: { tenants: Tenants };
  readonly #client: APIClient;

  constructor(options: ClientOptions = {}) {
    this.#client = new APIClient(options);
    this.functions = new Functions(this.#client);
    this.aliases = new Aliases(this.#client);
    this.invocations = new Invocations(this.#client);
    this.batches = new Batches(this.#client);
    this.usage = new Usage(this.#client);
    this.models = new Models(this.#client);
    this.webhooks = new Webhooks(this.#client);
    this.apiKeys = new ApiKeys(this.#client);
    this.triggers = new Triggers(this.#client);
    this.admin = { tenants: new Tenants(this.#client) };
  }

  get baseURL(): string {
    return this.#client.baseURL;
  }

  /**
   * Runs the function and waits for the result: by default its `default` alias, else its
   * latest version; `functions.pin(fn, 3)` or `'name@prod'` names another. Retried like any request: a sync
   * invocation leaves no durable work behind, so a retry at worst generates twice. (No
   * Idempotency-Key is sent: the server would replay a failed attempt's error to the retry.)
   */
  invoke<F extends FunctionRef>(fn: F, input: InputOf<F>, options: InvokeOptions = {}): Promise<InvokeResponse> {
    const { params, splitKey, ...request } = options;
    return this.#client.post(invokePath(fn), { input, params }, withSplitKey(request, splitKey));
  }

  /**
   * Streams the generation: an async iterable of `{type: 'token', text}` events ending with
   * `{type: 'done', usage, ...}`; see InvocationStream. The request starts at once; HTTP
   * errors (404, 422...) are thrown by the iteration. Abort with `options.signal`,
   * `stream.abort()` or by leaving the loop: the server then stops generating.
   */
  stream<F extends FunctionRef>(fn: F, input: InputOf<F>, options: InvokeOptions = {}): InvocationStream {
    const { params, signal, splitKey, ...request } = options;
    return new InvocationStream(async (streamSignal) => {
      const { response } = await this.#client.request({
        method: 'POST',
        path: invokePath(fn),
        body: { input, params, stream: true },
        options: { ...withSplitKey(request, splitKey), signal: streamSignal },
        stream: true,
      });
      return response;
    }, signal);
  }

  /**
   * Queues an invocation on the durable queue and returns a handle to `wait()` for it or
   * `cancel()` it. An Idempotency-Key is always sent (generated unless given), so a retried
   * request returns the invocation the first attempt created.
   */
  async invokeAsync<F extends FunctionRef>(fn: F, input: InputOf<F>, options: InvokeAsyncOptions = {}): Promise<AsyncInvocation> {
    const { params, webhook, idempotencyKey, splitKey, ...rest } = options;
    const request = withSplitKey(rest, splitKey);
    const headers = { 'idempotency-key': idempotencyKey ?? randomUUID(), ...request.headers };
    const accepted = await this.#client.post<AsyncAccepted>(
      invokePath(fn),
      { input, params, webhook, mode: 'async' },
      { ...request, headers },
    );
    return new AsyncInvocation(this.invocations, accepted);
  }
}

function withSplitKey(request: RequestOptions, splitKey: string | undefined): RequestOptions {
  return splitKey === undefined ? request : { ...request, headers: { 'genrt-split-key': splitKey, ...request.headers } };
}

function invokePath(fn: FunctionRef): string {
  const name = typeof fn === 'string' ? fn : fn.name;
  return `/v1/functions/${encodeURIComponent(name)}/invoke`;
}
