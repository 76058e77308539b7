import type { APIClient, RequestOptions } from '../core.js';
import type {
  DeployResponse,
  EvaluateRequest,
  EvaluateResponse,
  FunctionDefinition,
  FunctionDetail,
  FunctionStats,
  FunctionSummary,
  Params,
  VersionInfo,
} from '../types.js';

const fn = (name: string) => `/v1/functions/${encodeURIComponent(name)}`;

export class Functions {
  constructor(private readonly client: APIClient) {}

  /**
   * Deploys a definition. The server compares it with the latest version: a changed one
   * becomes a new version (`created: true`), an identical one returns the latest
   * (`created: false`), so deploying on every start is safe.
   */
  deploy(definition: FunctionDefinition, options?: RequestOptions): Promise<DeployResponse> {
    return this.client.post('/v1/functions', definition, options);
  }

  async list(options?: RequestOptions): Promise<FunctionSummary[]> {
    return (await this.client.get<{ functions: FunctionSummary[] }>('/v1/functions', undefined, options)).functions;
  }

  get(name: string, options?: RequestOptions): Promise<FunctionDetail> {
    return this.client.get(fn(name), undefined, options);
  }

  /** Every version, oldest first. */
  async versions(name: string, options?: RequestOptions): Promise<VersionInfo[]> {
    return (await this.client.get<{ versions: VersionInfo[] }>(`${fn(name)}/versions`, undefined, options)).versions;
  }

  /**
   * A reference to one version of a function, for `invoke`, `stream`, `invokeAsync` and the
   * OpenAI routes' `model`: `pin('summarize', 3)` is `'summarize@3'`.
   */
  pin(fn: string | { name: string }, version: number): string {
    if (!Number.isInteger(version) || version < 1) throw new RangeError(`a version is an integer from 1, not ${version}`);
    const name = typeof fn === 'string' ? fn.split('@')[0]! : fn.name;
    return `${name}@${version}`;
  }

  /**
   * How each version did over the last `windowS` seconds (default a day): invocations,
   * errors by code, latency and time-to-first-token p50/p99, tokens, cache hit rate, aliases,
   * evaluation scores, and for a shadow version its agreement with the primaries.
   */
  stats(name: string, windowS?: number, options?: RequestOptions): Promise<FunctionStats> {
    return this.client.get(`${fn(name)}/stats`, windowS === undefined ? undefined : { window_s: windowS }, options);
  }

  /** Deletes the function and all its versions (its invocation records are kept). */
  delete(name: string, options?: RequestOptions): Promise<void> {
    return this.client.delete(fn(name), options);
  }

  /** Runs inputs in the background so that their results are cached ahead of demand. */
  prewarm(name: string, inputs: unknown[], params?: Params, options?: RequestOptions): Promise<{ accepted: number }> {
    return this.client.post(`${fn(name)}/prewarm`, { inputs, params }, options);
  }

  /**
   * Scores a version (default the latest) with ROUGE-L and BLEU on `cases`, or on the latest
   * version's evaluation set, so that versions can be compared before one is promoted.
   */
  evaluate(name: string, request: EvaluateRequest = {}, options?: RequestOptions): Promise<EvaluateResponse> {
    return this.client.post(`${fn(name)}/evaluate`, request, options);
  }
}
