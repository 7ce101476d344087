/**
 * Errors as named types, shared by the engine, the index and the transports.
 * Model code throws these; transports translate them (HTTP status, gRPC status) and never
 * decide meaning themselves. Anything else that escapes is an internal error (500 / INTERNAL).
 */

export type ErrorCode =
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'RESOURCE_EXHAUSTED'
  | 'FAILED_PRECONDITION'
  | 'UNAVAILABLE'
  | 'DEADLINE_EXCEEDED'
  | 'CANCELLED'
  | 'UNAUTHENTICATED'
  | 'PERMISSION_DENIED'
  | 'INTERNAL';

export class CatskimError extends Error {
  readonly code: ErrorCode;
  /** The request field at fault, when one is (e.g. "chunk_size", "body.k"). */
  readonly field?: string;
  /** Extra machine-readable detail a transport may put in the error body (e.g. the OOD score). */
  readonly details?: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, opts: { field?: string; details?: Record<string, unknown>; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = code;
    this.field = opts.field;
    this.details = opts.details;
  }
}

/** The client sent a value that can never work (HTTP 400, gRPC INVALID_ARGUMENT). */
export class InvalidArgumentError extends CatskimError {
  constructor(field: string, message: string, details?: Record<string, unknown>) {
    super('INVALID_ARGUMENT', `${field}: ${message}`, { field, details });
  }
}

/** A named thing (model, variant, request id, label) does not exist (HTTP 404, gRPC NOT_FOUND). */
export class NotFoundError extends CatskimError {
  constructor(message: string, field?: string) {
    super('NOT_FOUND', message, { field });
  }
}

/** A bounded queue or budget is full; retry later (HTTP 429 + Retry-After, gRPC RESOURCE_EXHAUSTED). */
export class ResourceExhaustedError extends CatskimError {
  readonly retryAfterSeconds: number;
  constructor(message: string, retryAfterSeconds = 1, details?: Record<string, unknown>) {
    super('RESOURCE_EXHAUSTED', message, { details });
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

/** The request is well formed but the system refuses it in its state (HTTP 422, gRPC FAILED_PRECONDITION), e.g. an OOD gate. */
export class FailedPreconditionError extends CatskimError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('FAILED_PRECONDITION', message, { details });
  }
}

/** Not ready, draining or a dependency is down (HTTP 503, gRPC UNAVAILABLE). */
export class UnavailableError extends CatskimError {
  constructor(message: string) {
    super('UNAVAILABLE', message);
  }
}

export class DeadlineExceededError extends CatskimError {
  constructor(message = 'deadline exceeded') {
    super('DEADLINE_EXCEEDED', message);
  }
}

export class CancelledError extends CatskimError {
  constructor(message = 'cancelled by the client') {
    super('CANCELLED', message);
  }
}

export class UnauthenticatedError extends CatskimError {
  constructor(message = 'missing or invalid bearer token') {
    super('UNAUTHENTICATED', message);
  }
}

export function isCatskimError(e: unknown): e is CatskimError {
  return e instanceof CatskimError;
}
