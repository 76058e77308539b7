import { randomUUID } from 'node:crypto';
import type { APIClient, RequestOptions } from '../core.js';
import type { BatchInfo, BatchResultLine, Params, WebhookSpec } from '../types.js';

export interface CreateBatchOptions extends RequestOptions {
  params?: Params;
  webhook?: WebhookSpec;
  /** Sent as Idempotency-Key; one is generated when absent. */
  idempotencyKey?: string;
}

export class Batches {
  constructor(private readonly client: APIClient) {}

  /**
   * Submits up to 10 000 inputs of one function; they run from the durable queue.
   * An Idempotency-Key is sent, but the server does not deduplicate batches yet, so a create
   * is retried only after an error response (nothing was committed), never after a dropped
   * connection or a timeout, which might have been committed.
   */
  async create(name: string, inputs: unknown[], options: CreateBatchOptions = {}): Promise<BatchInfo> {
    const { params, webhook, idempotencyKey, ...request } = options;
    const headers = { 'idempotency-key': idempotencyKey ?? randomUUID(), ...request.headers };
    const { data } = await this.client.request<BatchInfo>({
      method: 'POST',
      path: `/v1/functions/${encodeURIComponent(name)}/batches`,
      body: { inputs, params, webhook },
      options: { ...request, headers },
      retryWithoutResponse: false,
    });
    return data;
  }

  /** The batch with its items counted by status (`status` is `completed` when all are done). */
  get(id: string, options?: RequestOptions): Promise<BatchInfo> {
    return this.client.get(`/v1/batches/${encodeURIComponent(id)}`, undefined, options);
  }

  /** One line per input, in input order; unfinished items show their current status. */
  async results(id: string, options?: RequestOptions): Promise<BatchResultLine[]> {
    const text = await this.client.get<string | undefined>(`/v1/batches/${encodeURIComponent(id)}/results`, undefined, options);
    return (text ?? '')
      .split('\n')
      .filter((line) => line.trim() !== '')
      .map((line) => JSON.parse(line) as BatchResultLine);
  }
}
