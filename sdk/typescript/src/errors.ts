/**
 * Typed errors mirroring the service's statuses. Every error the service returns has the body
 * `{"error": {"type", "message", "code"}}`; the client turns it into one of these classes.
 */

import type { ErrorBody } from "./types.js";

export interface MegaContextErrorOptions {
  /** The HTTP status (undefined for network failures). */
  status?: number;
  /** The service's error type (e.g. not_found, invalid_request), or the client's own. */
  type: string;
  /** Seconds the service asked to wait (`Retry-After`), when it sent one. */
  retryAfter?: number;
  /** The parsed error body, when the service sent one. */
  body?: ErrorBody;
  cause?: unknown;
}

/** The base of every error the client throws. */
export class MegaContextError extends Error {
  override name = "MegaContextError";
  /** The HTTP status; undefined for ConnectionError and TimeoutError. */
  readonly status: number | undefined;
  /** The service's error type (e.g. "not_found"), or "connection_error" / "timeout". */
  readonly type: string;
  /** Seconds the service asked to wait before retrying (`Retry-After`), if sent. */
  readonly retryAfter: number | undefined;
  /** The error body as the service sent it. */
  readonly body: ErrorBody | undefined;

  constructor(message: string, options: MegaContextErrorOptions) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.status = options.status;
    this.type = options.type;
    this.retryAfter = options.retryAfter;
    this.body = options.body;
  }
}

/** 400 or 422: a bad field, a bad tree name, a body that is not JSON. */
export class InvalidRequestError extends MegaContextError {
  override name = "InvalidRequestError";
}

/** 401: a missing, malformed, unknown or revoked API key. */
export class AuthenticationError extends MegaContextError {
  override name = "AuthenticationError";
}

/** 403: the key's scopes do not allow the call. */
export class PermissionDeniedError extends MegaContextError {
  override name = "PermissionDeniedError";
}

/** 404: no such tree or source in this tenant (another tenant's trees are 404 too). */
export class NotFoundError extends MegaContextError {
  override name = "NotFoundError";
}

/**
 * 409: the tree exists (`already_exists`), another request is writing it (`conflict`, the only
 * one retried), an annotation changed since the version sent (`version_conflict`), or a source
 * is under legal hold (`on_hold`); `type` says which.
 */
export class ConflictError extends MegaContextError {
  override name = "ConflictError";
}

/** 413: the body is larger than the service's limit (send a large source in several ingests). */
export class PayloadTooLargeError extends MegaContextError {
  override name = "PayloadTooLargeError";
}

/** 429: too many requests. */
export class RateLimitError extends MegaContextError {
  override name = "RateLimitError";
}

/** 5xx: the service failed. */
export class ServerError extends MegaContextError {
  override name = "ServerError";
}

/** The service could not be reached, or the connection broke. */
export class ConnectionError extends MegaContextError {
  override name = "ConnectionError";
}

/** No response (or, while streaming, no data) within the client's timeoutMs. */
export class TimeoutError extends MegaContextError {
  override name = "TimeoutError";
}

/** The error class for an HTTP status. */
export function errorClassFor(status: number): typeof MegaContextError {
  if (status === 400 || status === 422) return InvalidRequestError;
  if (status === 401) return AuthenticationError;
  if (status === 403) return PermissionDeniedError;
  if (status === 404) return NotFoundError;
  if (status === 409) return ConflictError;
  if (status === 413) return PayloadTooLargeError;
  if (status === 429) return RateLimitError;
  if (status >= 500) return ServerError;
  return MegaContextError;
}

/** The typed error for a status and whatever body came with it. */
export function errorFromResponse(
  status: number,
  payload: unknown,
  text: string,
  retryAfter?: number,
): MegaContextError {
  const body = errorBodyOf(payload);
  const Class = errorClassFor(status);
  const message =
    body?.message ?? (text.trim().slice(0, 500) || `the service answered HTTP ${status}`);
  return new Class(message, {
    status,
    type: body?.type ?? "http_error",
    ...(retryAfter === undefined ? {} : { retryAfter }),
    ...(body === undefined ? {} : { body }),
  });
}

function errorBodyOf(payload: unknown): ErrorBody | undefined {
  if (typeof payload !== "object" || payload === null) return undefined;
  const error = (payload as { error?: unknown }).error;
  if (typeof error !== "object" || error === null) return undefined;
  const { type, message, code } = error as Record<string, unknown>;
  if (typeof message !== "string") return undefined;
  return {
    type: typeof type === "string" ? type : "error",
    message,
    code: typeof code === "number" ? code : 0,
  };
}
