// The server's stable error codes. They come from the one error table of the runtime
// (runtime/src/error.rs); a test compares this list with that table so that the two never
// drift. The type comes from the OpenAPI document's `ErrorCode` schema (see `ErrorCode`
// below); this list is the runtime value.
import type { components } from './generated/openapi.js';

export const ERROR_CODES = [
  'invalid_json',
  'invalid_request',
  'unsupported_media_type',
  'payload_too_large',
  'missing_credentials',
  'invalid_token',
  'token_expired',
  'invalid_api_key',
  'invalid_signature',
  'stale_webhook',
  'insufficient_scope',
  'tenant_disabled',
  'model_not_allowed',
  'rate_limited',
  'concurrency_limited',
  'quota_exhausted',
  'idempotency_key_reused',
  'idempotency_in_progress',
  'not_cancellable',
  'replayed_webhook',
  'tenant_not_found',
  'tenant_exists',
  'api_key_not_found',
  'batch_not_found',
  'trigger_not_found',
  'delivery_not_found',
  'callback_url_forbidden',
  'not_found',
  'method_not_allowed',
  'function_not_found',
  'version_not_found',
  'invocation_not_found',
  'invalid_spec',
  'invalid_input',
  'template_error',
  'template_limit',
  'invalid_params',
  'max_tokens_exceeds_context',
  'prompt_too_long',
  'unknown_model',
  'invalid_output_spec',
  'not_cacheable',
  'embeddings_not_supported',
  'invalid_output',
  'insufficient_memory',
  'model_not_found',
  'model_exists',
  'model_draining',
  'invalid_model_source',
  'model_not_awaiting_upload',
  'model_sha256_mismatch',
  'model_not_gguf',
  'model_gguf_version',
  'model_truncated',
  'model_unsupported_architecture',
  'model_too_large',
  'model_download_failed',
  'model_registration_interrupted',
  'model_quota_exceeded',
  'model_already_quantized',
  'model_quantization_failed',
  'model_unavailable',
  'overloaded',
  'replica_failed',
  'timeout',
  'shutting_down',
  'database_unavailable',
  'internal',
] as const;

type Schemas = components['schemas'];

/**
 * A machine-readable error code of the genrt API. Taken from the OpenAPI document's
 * `ErrorCode` schema when it has one, otherwise from the list above.
 */
export type ErrorCode = Schemas extends { ErrorCode: infer C extends string } ? C : (typeof ERROR_CODES)[number];
