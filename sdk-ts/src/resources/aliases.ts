import type { APIClient, RequestOptions } from '../core.js';
import type { AliasChanged, AliasEvent, AliasInfo, GateSpec, ShadowSpec, VersionWeight } from '../types.js';

const aliases = (name: string) => `/v1/functions/${encodeURIComponent(name)}/aliases`;
const alias = (name: string, alias: string) => `${aliases(name)}/${encodeURIComponent(alias)}`;

export interface SetAliasOptions extends RequestOptions {
  /**
   * Mirror `percent`% of the alias's interactive calls to a candidate `version` in the
   * background: callers get the alias's answer only; `functions.stats` compares the two.
   */
  shadow?: ShadowSpec;
  /**
   * Score the version(s) the move adds on the function's evaluation set first, and refuse
   * the move (409 `promotion_refused`, a ConflictError naming both scores) when they fail:
   * `{ min_rouge_l: 0.4 }` and/or `{ not_worse_than: 'current', max_drop: 0.02 }`.
   */
  gate?: GateSpec;
}

/**
 * A function's aliases: named pointers (`prod`, `staging`) to one version or a weighted split,
 * invoked as `name@alias`. Every change is recorded; `rollback` returns to the previous
 * target in one call.
 */
export class Aliases {
  constructor(private readonly client: APIClient) {}

  async list(name: string, options?: RequestOptions): Promise<AliasInfo[]> {
    return (await this.client.get<{ aliases: AliasInfo[] }>(aliases(name), undefined, options)).aliases;
  }

  /** Points `alias` at one version (creating it if needed). */
  set(name: string, aliasName: string, version: number, options: SetAliasOptions = {}): Promise<AliasChanged> {
    const { shadow, gate, ...request } = options;
    return this.client.put(alias(name, aliasName), { version, shadow, gate }, request);
  }

  /**
   * Splits `alias` over up to 4 versions whose weights sum to 100. Callers sending the same
   * `splitKey` (an end user's id) stay on one version; changing weights moves as few as
   * possible.
   */
  split(name: string, aliasName: string, versions: VersionWeight[], options: SetAliasOptions = {}): Promise<AliasChanged> {
    const { shadow, gate, ...request } = options;
    return this.client.put(alias(name, aliasName), { versions, shadow, gate }, request);
  }

  /**
   * Moves the alias back to where it pointed before its last change. Not retried after a
   * dropped connection: a rollback is itself a change, so a second one would undo the first.
   */
  async rollback(name: string, aliasName: string, options?: RequestOptions): Promise<AliasChanged> {
    const { data } = await this.client.request<AliasChanged>({
      method: 'POST',
      path: `${alias(name, aliasName)}/rollback`,
      options,
      retryWithoutResponse: false,
    });
    return data;
  }

  delete(name: string, aliasName: string, options?: RequestOptions): Promise<void> {
    return this.client.delete(alias(name, aliasName), options);
  }

  /** Every change (and refused promotion), newest first. */
  async history(name: string, aliasName: string, options?: RequestOptions): Promise<AliasEvent[]> {
    return (await this.client.get<{ events: AliasEvent[] }>(`${alias(name, aliasName)}/history`, undefined, options)).events;
  }
}
