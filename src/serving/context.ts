/**
 * What a transport hands the serving layer with every request: the request's identity, logger,
 * cancellation and deadline, how its API names fields, and its A/B routing inputs.
 */
import type { Logger } from 'pino';
import type { FieldNamer } from './fields.js';

export interface RequestContext {
  readonly requestId: string;
  /** Carries the request id. */
  readonly logger: Logger;
  /** Aborted on client disconnect (CancelledError) or deadline (DeadlineExceededError). */
  readonly signal: AbortSignal;
  /** Absolute deadline in ms since the epoch; Infinity = none. */
  readonly deadline: number;
  /** Names fields in errors the way the transport's API does (fieldNames('body.') for HTTP, fieldNames('') for gRPC). */
  readonly field: FieldNamer;
  /** A/B user key (raw; the service validates it) and its name in errors (e.g. "header.x-user-id"). */
  readonly userKey?: unknown;
  readonly userKeyField?: string;
  /** Forced A/B variant (x-catskim-variant) and its name in errors. */
  readonly variant?: string;
  readonly variantField?: string;
  /** Requested priority (raw header / metadata x-catskim-priority: high|normal|low) and its name in errors. */
  readonly priority?: unknown;
  readonly priorityField?: string;
  /** Called once the A/B router assigned a variant, before the work runs (HTTP: the x-catskim-variant header, also on errors). */
  readonly onVariant?: (name: string) => void;
}
