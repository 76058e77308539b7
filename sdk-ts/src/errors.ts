// The error hierarchy, shaped like the OpenAI SDK's so that code written against one reads
// naturally against the other: one class per HTTP status family, plus the failures that never
// got a response (connection, timeout, the caller's own abort).
import type { ErrorCode } from './error-codes.js';

/** The base of every error this SDK throws. */
export class GenrtError extends Error {
  override name = 'GenrtError';
}

/** The server answered with an error (or a stream ended with an `error` event). */
export class APIError extends GenrtError {
  override name = 'APIError';
  /** HTTP status; undefined for an `error` event at the end of a stream (the stream was 200). */
  readonly status: number | undefined;
  /** The server's stable code, e.g. `function_not_found`; undefined if the body had none. */
  readonly code: ErrorCode | undefined;
  /** The request field at fault, when the server names one (`input.topic`, `params.max_tokens`). */
  readonly field: string | undefined;
  /** The `x-request-id` response header, when the server sends one. */
  readonly requestId: string | undefined;
  readonly headers: Headers | undefined;
  /** The parsed response body, or its text when it was not JSON. */
  readonly body: unknown;

  constructor(
    status: number | undefined,
    body: unknown,
    message: string | undefined,
    headers: Headers | undefined,
  ) {
    const detail = errorDetail(body);
    const text = detail?.message ?? message ?? (status ? `HTTP ${status}` : 'API error');
    super(status ? `${status} ${detail?.code ?? ''}${detail?.code ? ': ' : ''}${text}` : text);
    this.status = status;
    this.code = detail?.code as ErrorCode | undefined;
    this.field = detail?.field ?? undefined;
    this.headers = headers;
    this.requestId = headers?.get('x-request-id') ?? undefined;
    this.body = body;
  }

  /** The error class for a status: BadRequestError for 400, NotFoundError for 404, and so on. */
  static generate(status: number | undefined, body: unknown, message: string | undefined, headers: Headers | undefined): APIError {
    const Class = status === undefined ? APIError : (STATUS_CLASSES[status] ?? (status >= 500 ? InternalServerError : APIError));
    return new Class(status, body, message, headers);
  }
}

export class BadRequestError extends APIError { override name = 'BadRequestError'; }
export class AuthenticationError extends APIError { override name = 'AuthenticationError'; }
export class PermissionDeniedError extends APIError { override name = 'PermissionDeniedError'; }
export class NotFoundError extends APIError { override name = 'NotFoundError'; }
export class ConflictError extends APIError { override name = 'ConflictError'; }
export class UnprocessableEntityError extends APIError { override name = 'UnprocessableEntityError'; }
export class RateLimitError extends APIError { override name = 'RateLimitError'; }
export class InternalServerError extends APIError { override name = 'InternalServerError'; }

const STATUS_CLASSES: Record<number, typeof APIError> = {
  400: BadRequestError,
  401: AuthenticationError,
  403: PermissionDeniedError,
  404: NotFoundError,
  409: ConflictError,
  422: UnprocessableEntityError,
  429: RateLimitError,
};

/** No response: the connection failed or was reset. */
export class APIConnectionError extends GenrtError {
  override name = 'APIConnectionError';
  constructor(message = 'connection error', options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** No response within `timeoutMs` (or `wait()` ran past its own timeout). */
export class APITimeoutError extends APIConnectionError {
  override name = 'APITimeoutError';
  constructor(message = 'request timed out', options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** The caller's AbortSignal fired. */
export class APIUserAbortError extends GenrtError {
  override name = 'APIUserAbortError';
  constructor(message = 'request was aborted', options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** A webhook's signature or timestamp did not verify. */
export class WebhookVerificationError extends GenrtError {
  override name = 'WebhookVerificationError';
}

interface ErrorDetail {
  code?: string;
  message?: string;
  field?: string | null;
}

function errorDetail(body: unknown): ErrorDetail | undefined {
  if (body && typeof body === 'object' && 'error' in body) {
    const error = (body as { error: unknown }).error;
    if (error && typeof error === 'object') return error as ErrorDetail;
  }
  return undefined;
}
