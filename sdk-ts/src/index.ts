// @genrt/sdk: the TypeScript client of genrt, the serverless runtime for generative-AI
// functions. See README.md.
export { Genrt, type FunctionRef, type InvokeOptions, type InvokeAsyncOptions } from './client.js';
export { type ClientOptions, type RequestOptions, VERSION } from './core.js';
export { defineFunction, type GenrtFunction, type InputOf } from './define.js';
export { ERROR_CODES, type ErrorCode } from './error-codes.js';
export {
  GenrtError,
  APIError,
  BadRequestError,
  AuthenticationError,
  PermissionDeniedError,
  NotFoundError,
  ConflictError,
  UnprocessableEntityError,
  RateLimitError,
  InternalServerError,
  APIConnectionError,
  APITimeoutError,
  APIUserAbortError,
  WebhookVerificationError,
} from './errors.js';
export { InvocationStream, type StreamEvent, type TokenEvent, type DoneEvent } from './streaming.js';
export { AsyncInvocation, type ListInvocationsParams, type WaitOptions } from './resources/invocations.js';
export type { CreateBatchOptions } from './resources/batches.js';
export type { SetAliasOptions } from './resources/aliases.js';
export type { WebhookEvent, HeadersLike } from './resources/webhooks.js';
export type { UsageParams, RegistrationWaitOptions, AdapterWaitOptions } from './resources/admin.js';
export type * from './types.js';
export type { components, paths, operations } from './generated/openapi.js';
