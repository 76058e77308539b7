// Smaller resources: usage, models, API keys, triggers and the operator's tenant admin.
import type { APIClient, RequestOptions } from '../core.js';
import type {
  AdapterInfo,
  ApiKeyInfo,
  CallerInfo,
  CreateApiKey,
  CreatedApiKey,
  CreateTenant,
  CreateTrigger,
  DeviceList,
  ModelInfo,
  RegisterAdapter,
  RegisterModel,
  TenantInfo,
  TriggerInfo,
  UpdateTenant,
  UsageReport,
} from '../types.js';

export interface UsageParams {
  /** Start, inclusive; default 30 days before `to`. */
  from?: Date | string;
  /** End, exclusive; default now. */
  to?: Date | string;
  groupBy?: 'function' | 'day';
}

export class Usage {
  constructor(private readonly client: APIClient) {}

  /** Invocations, tokens, cache hits and errors, by function or by UTC day. */
  get(params: UsageParams = {}, options?: RequestOptions): Promise<UsageReport> {
    const iso = (d: Date | string | undefined) => (d instanceof Date ? d.toISOString() : d);
    return this.client.get('/v1/usage', { from: iso(params.from), to: iso(params.to), group_by: params.groupBy }, options);
  }
}

export interface RegistrationWaitOptions extends RequestOptions {
  /** Between polls; default 500 ms. */
  intervalMs?: number;
  /** Give up after this long; default 30 minutes (a large download). */
  waitMs?: number;
  /** Called after each poll with the model's entry (`registration.percent`, `bytes_done`). */
  onProgress?: (model: ModelInfo) => void;
}

export class Models {
  /** LoRA adapters of a model: `models.adapters.register('smollm2', {...})`. */
  readonly adapters: Adapters;

  constructor(private readonly client: APIClient) {
    this.adapters = new Adapters(client);
  }

  /**
   * Registers a model (`admin`): `source` is `{ path }` (a file under the server's model
   * store), `{ url }` (fetched by the server) or `{ upload: true }` (then send the file with
   * `upload`). Resolves at once with the model `registering` (or `awaiting_upload`); see
   * `waitUntilRegistered`.
   */
  register(params: RegisterModel, options?: RequestOptions): Promise<ModelInfo> {
    return this.client.post('/v1/models', params, options);
  }

  /**
   * The file of a model registered with `{ upload: true }`, streamed (in Node:
   * `Readable.toWeb(fs.createReadStream(path))`); never retried, since a stream is read once.
   */
  async upload(
    id: string,
    file: Uint8Array | Blob | ReadableStream<Uint8Array>,
    options?: RequestOptions,
  ): Promise<ModelInfo> {
    const path = `/v1/models/${encodeURIComponent(id)}/file`;
    return (await this.client.request<ModelInfo>({ method: 'PUT', path, rawBody: file, options })).data;
  }

  /**
   * Polls until the registration is `ready` or `failed` and resolves with the entry either
   * way (`registration.error` says why it failed).
   */
  async waitUntilRegistered(id: string, options: RegistrationWaitOptions = {}): Promise<ModelInfo> {
    const { intervalMs = 500, waitMs = 30 * 60_000, onProgress, ...request } = options;
    const deadline = Date.now() + waitMs;
    for (;;) {
      const model = await this.get(id, request);
      onProgress?.(model);
      const state = model.registration?.state;
      if (state === 'ready' || state === 'failed') return model;
      if (Date.now() > deadline) throw new Error(`model ${id} still ${state} after ${waitMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, intervalMs));
    }
  }

  /**
   * Deletes a model (`admin`): new work is refused (`model_draining`), running work
   * finishes, then it is gone. Resolves with the model `draining`/`deleting`.
   */
  async delete(id: string, options?: RequestOptions): Promise<ModelInfo> {
    const path = `/v1/models/${encodeURIComponent(id)}`;
    return (await this.client.request<ModelInfo>({ method: 'DELETE', path, options })).data;
  }

  /** Models with state, replicas, busy slots and queue depth, and each one's registry entry. */
  async list(options?: RequestOptions): Promise<ModelInfo[]> {
    return (await this.client.get<{ models: ModelInfo[] }>('/v1/models', undefined, options)).models;
  }

  get(id: string, options?: RequestOptions): Promise<ModelInfo> {
    return this.client.get(`/v1/models/${encodeURIComponent(id)}`, undefined, options);
  }

  /** The llama.cpp backends the node loaded (`CPU`, `CUDA`) and their devices' free memory. */
  devices(options?: RequestOptions): Promise<DeviceList> {
    return this.client.get('/v1/devices', undefined, options);
  }
}

export interface AdapterWaitOptions extends RequestOptions {
  /** Between polls; default 500 ms. */
  intervalMs?: number;
  /** Give up after this long; default 10 minutes. */
  waitMs?: number;
  /** Called after each poll with the adapter's entry (`registration.percent`). */
  onProgress?: (adapter: AdapterInfo) => void;
}

/**
 * LoRA adapters registered on a base model. A function runs with them through
 * `adapters: [{ id, scale }]` or `model: 'base:adapter'`; OpenAI requests name them
 * `base:adapter`.
 */
export class Adapters {
  constructor(private readonly client: APIClient) {}

  #path(model: string, adapter?: string): string {
    const base = `/v1/models/${encodeURIComponent(model)}/adapters`;
    return adapter === undefined ? base : `${base}/${encodeURIComponent(adapter)}`;
  }

  /**
   * Registers an adapter of `model` (`admin`, or a tenant's own `<tenant>.<name>` with
   * `models:write`): `source` is `{ path }`, `{ url }` or `{ upload: true }` (then `upload`).
   * Resolves at once with the adapter `registering`; see `waitUntilRegistered`.
   */
  register(model: string, params: RegisterAdapter, options?: RequestOptions): Promise<AdapterInfo> {
    return this.client.post(this.#path(model), params, options);
  }

  /** The file of an adapter registered with `{ upload: true }`, streamed; never retried. */
  async upload(
    model: string,
    adapter: string,
    file: Uint8Array | Blob | ReadableStream<Uint8Array>,
    options?: RequestOptions,
  ): Promise<AdapterInfo> {
    const path = `${this.#path(model, adapter)}/file`;
    return (await this.client.request<AdapterInfo>({ method: 'PUT', path, rawBody: file, options })).data;
  }

  /** Polls until the adapter is `ready` or `failed`; resolves with its entry either way. */
  async waitUntilRegistered(model: string, adapter: string, options: AdapterWaitOptions = {}): Promise<AdapterInfo> {
    const { intervalMs = 500, waitMs = 10 * 60_000, onProgress, ...request } = options;
    const deadline = Date.now() + waitMs;
    for (;;) {
      const info = await this.get(model, adapter, request);
      onProgress?.(info);
      const state = info.registration.state;
      if (state === 'ready' || state === 'failed') return info;
      if (Date.now() > deadline) throw new Error(`adapter ${model}:${adapter} still ${state} after ${waitMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, intervalMs));
    }
  }

  async list(model: string, options?: RequestOptions): Promise<AdapterInfo[]> {
    return (await this.client.get<{ adapters: AdapterInfo[] }>(this.#path(model), undefined, options)).adapters;
  }

  get(model: string, adapter: string, options?: RequestOptions): Promise<AdapterInfo> {
    return this.client.get(this.#path(model, adapter), undefined, options);
  }

  /** New invocations naming it are refused at once; running ones finish. */
  async delete(model: string, adapter: string, options?: RequestOptions): Promise<AdapterInfo> {
    return (await this.client.request<AdapterInfo>({ method: 'DELETE', path: this.#path(model, adapter), options })).data;
  }
}

export class ApiKeys {
  constructor(private readonly client: APIClient) {}

  /** The returned `secret` is shown this once. */
  create(params: CreateApiKey, options?: RequestOptions): Promise<CreatedApiKey> {
    return this.client.post('/v1/api-keys', params, options);
  }

  async list(options?: RequestOptions): Promise<ApiKeyInfo[]> {
    return (await this.client.get<{ api_keys: ApiKeyInfo[] }>('/v1/api-keys', undefined, options)).api_keys;
  }

  /** Revocation is immediate. */
  revoke(id: string, options?: RequestOptions): Promise<void> {
    return this.client.delete(`/v1/api-keys/${encodeURIComponent(id)}`, options);
  }

  /** The credential this client sends: its tenant, scopes, kind and expiry (`GET /v1/me`). */
  me(options?: RequestOptions): Promise<CallerInfo> {
    return this.client.get('/v1/me', undefined, options);
  }
}

export class Triggers {
  constructor(private readonly client: APIClient) {}

  /** An incoming webhook that starts `name`; the returned `secret` is shown this once. */
  create(name: string, params: CreateTrigger = {}, options?: RequestOptions): Promise<TriggerInfo> {
    return this.client.post(`/v1/functions/${encodeURIComponent(name)}/triggers`, params, options);
  }

  async list(name: string, options?: RequestOptions): Promise<TriggerInfo[]> {
    const path = `/v1/functions/${encodeURIComponent(name)}/triggers`;
    return (await this.client.get<{ triggers: TriggerInfo[] }>(path, undefined, options)).triggers;
  }

  delete(id: string, options?: RequestOptions): Promise<void> {
    return this.client.delete(`/v1/triggers/${encodeURIComponent(id)}`, options);
  }
}

/** Tenant management; needs a credential with the `admin` scope. */
export class Tenants {
  constructor(private readonly client: APIClient) {}

  create(params: CreateTenant, options?: RequestOptions): Promise<TenantInfo> {
    return this.client.post('/v1/admin/tenants', params, options);
  }

  async list(options?: RequestOptions): Promise<TenantInfo[]> {
    return (await this.client.get<{ tenants: TenantInfo[] }>('/v1/admin/tenants', undefined, options)).tenants;
  }

  get(id: string, options?: RequestOptions): Promise<TenantInfo> {
    return this.client.get(`/v1/admin/tenants/${encodeURIComponent(id)}`, undefined, options);
  }

  update(id: string, params: UpdateTenant, options?: RequestOptions): Promise<TenantInfo> {
    return this.client.patch(`/v1/admin/tenants/${encodeURIComponent(id)}`, params, options);
  }
}
