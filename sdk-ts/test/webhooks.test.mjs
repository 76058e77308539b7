// webhooks.verify against signatures made by the standardwebhooks reference library.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Webhook } from 'standardwebhooks';
import { Genrt, WebhookVerificationError } from '@genrt/sdk';

const secret = `whsec_${Buffer.from('a test secret of 32 bytes length').toString('base64')}`;
const other = `whsec_${Buffer.from('another secret, also 32 bytes!!').toString('base64')}`;
const genrt = new Genrt({ baseURL: 'http://127.0.0.1:9' });
const body = JSON.stringify({ type: 'invocation.succeeded', timestamp: '2026-11-28T12:00:00Z', data: { invocation_id: 'i', status: 'succeeded' } });

function signed(payload, { at = new Date(), key = secret, id = 'msg_1' } = {}) {
  return {
    'webhook-id': id,
    'webhook-timestamp': String(Math.floor(at.getTime() / 1000)),
    'webhook-signature': new Webhook(key).sign(id, at, payload),
  };
}

test('a good signature verifies and returns the parsed event', () => {
  const event = genrt.webhooks.verify(body, signed(body), secret);
  assert.equal(event.type, 'invocation.succeeded');
  assert.equal(event.data.invocation_id, 'i');
});

test('headers may be a fetch Headers, with any case, and the body bytes', () => {
  const headers = new Headers(Object.entries(signed(body)).map(([k, v]) => [k.toUpperCase(), v]));
  assert.equal(genrt.webhooks.verify(new TextEncoder().encode(body), headers, secret).type, 'invocation.succeeded');
});

test('a tampered body is refused', () => {
  const headers = signed(body);
  const tampered = body.replace('succeeded', 'failed');
  assert.throws(() => genrt.webhooks.verify(tampered, headers, secret), WebhookVerificationError);
});

test('a stale timestamp is refused even when correctly signed', () => {
  const headers = signed(body, { at: new Date(Date.now() - 10 * 60 * 1000) });
  assert.throws(() => genrt.webhooks.verify(body, headers, secret), (err) => err instanceof WebhookVerificationError && /timestamp/i.test(err.message));
});

test('the wrong secret is refused; during a rotation either secret verifies', () => {
  const headers = signed(body, { key: other });
  assert.throws(() => genrt.webhooks.verify(body, headers, secret), WebhookVerificationError);
  assert.equal(genrt.webhooks.verify(body, headers, [secret, other]).type, 'invocation.succeeded');
});

test('missing headers are refused', () => {
  assert.throws(() => genrt.webhooks.verify(body, {}, secret), WebhookVerificationError);
});
