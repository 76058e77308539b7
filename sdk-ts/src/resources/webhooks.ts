import { Webhook, WebhookVerificationError as StandardWebhookError } from 'standardwebhooks';
import { WebhookVerificationError } from '../errors.js';
import type { APIClient, RequestOptions } from '../core.js';
import type { DeliveryInfo, InvocationRecord } from '../types.js';

/** What genrt POSTs to a result webhook. */
export interface WebhookEvent {
  type: 'invocation.succeeded' | 'invocation.failed' | 'invocation.started' | (string & {});
  timestamp: string;
  data: InvocationRecord;
}

/** Headers as a fetch Headers, Node's IncomingHttpHeaders or a plain record. */
export type HeadersLike = Headers | Record<string, string | string[] | undefined>;

export class Webhooks {
  constructor(private readonly client: APIClient) {}

  /**
   * Checks a result webhook's Standard Webhooks signature (`webhook-id`,
   * `webhook-timestamp`, `webhook-signature`) against the tenant's secret (`whsec_...`; give
   * several during a rotation) and returns the parsed event. Throws WebhookVerificationError
   * when no secret matches, the body was altered, or the timestamp is more than five minutes
   * off. Pass the raw body exactly as received: re-serialized JSON does not verify.
   */
  verify(rawBody: string | Uint8Array, headers: HeadersLike, secret: string | string[]): WebhookEvent {
    const payload = typeof rawBody === 'string' ? rawBody : Buffer.from(rawBody);
    const plain = normalizeHeaders(headers);
    let last: unknown;
    for (const s of Array.isArray(secret) ? secret : [secret]) {
      try {
        return new Webhook(s).verify(payload, plain) as WebhookEvent;
      } catch (err) {
        last = err;
        if (!(err instanceof StandardWebhookError)) break;
      }
    }
    const message = last instanceof Error ? last.message : 'webhook verification failed';
    throw new WebhookVerificationError(message, { cause: last });
  }

  /** The tenant's signing secrets (two during a rotation's overlap). */
  async secrets(options?: RequestOptions): Promise<string[]> {
    return (await this.client.get<{ secrets: string[] }>('/v1/webhooks/secret', undefined, options)).secrets;
  }

  /** Makes a new secret; the old one keeps signing too for `overlapS` seconds. */
  async rotate(params: { overlapS?: number } = {}, options?: RequestOptions): Promise<string[]> {
    const body = params.overlapS === undefined ? {} : { overlap_s: params.overlapS };
    return (await this.client.post<{ secrets: string[] }>('/v1/webhooks/secret/rotate', body, options)).secrets;
  }

  /** Deliveries with every attempt, newest first. */
  async deliveries(params: { invocationId?: string; limit?: number } = {}, options?: RequestOptions): Promise<DeliveryInfo[]> {
    const query = { invocation_id: params.invocationId, limit: params.limit };
    return (await this.client.get<{ deliveries: DeliveryInfo[] }>('/v1/webhooks/deliveries', query, options)).deliveries;
  }

  /** Sends a delivery again (and re-enables its URL if a 410 had disabled it). */
  redeliver(id: string, options?: RequestOptions): Promise<DeliveryInfo> {
    return this.client.post(`/v1/webhooks/deliveries/${encodeURIComponent(id)}/redeliver`, undefined, options);
  }
}

function normalizeHeaders(headers: HeadersLike): Record<string, string> {
  const out: Record<string, string> = {};
  if (typeof (headers as Headers).forEach === 'function' && typeof (headers as Headers).get === 'function') {
    (headers as Headers).forEach((value, key) => (out[key.toLowerCase()] = value));
    return out;
  }
  for (const [key, value] of Object.entries(headers)) {
    if (value !== undefined) out[key.toLowerCase()] = Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}
