// Smaller resources: usage, models, API keys, triggers and the operator's tenant admin.
import type { APIClient, RequestOptions } from '../core.js';
import type {
  ApiKeyInfo,
  CreateApiKey,
  CreatedApiKey,
  CreateTenant,
  CreateTrigger,
  DeviceList,
  ModelInfo,
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

export class Models {
  constructor(private readonly client: APIClient) {}

  /** Registered models with state, replicas, busy slots and queue depth. */
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
