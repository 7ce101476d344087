/**
 * Transport -> RequestContext (src/serving/context.ts): request id, logger, cancellation, deadline,
 * field names, and the A/B inputs (user key: header/metadata `x-user-id`, else the request's own
 * field; forced variant: `x-catskim-variant`). The serving layer does the routing itself
 * (src/serving/experiments/route.ts); `routeHttp` is for routes that have no service of their own.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { GrpcCallContext } from '../grpc.js';
import { abortSignalFor } from '../http.js';
import type { RequestContext } from '../../serving/context.js';
import { fieldNames } from '../../serving/fields.js';
import type { Route, VariantDef } from '../../serving/experiments/config.js';
import { routed } from '../../serving/experiments/route.js';
import type { ExperimentsLink, Role } from '../../serving/experiments/router.js';

export const USER_HEADER = 'x-user-id';
export const VARIANT_HEADER = 'x-catskim-variant';
/** Priority in the admission queues (src/serving/admission/queue.ts): high | normal | low. */
export const PRIORITY_HEADER = 'x-catskim-priority';

const HTTP_FIELDS = fieldNames('body.');
const GRPC_FIELDS = fieldNames('');

function first(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

/** A fastify request as the serving layer sees it; `bodyUserKey` is the body's user_id. */
export function httpRequestContext(request: FastifyRequest, reply: FastifyReply, bodyUserKey?: unknown): RequestContext {
  const header = request.headers[USER_HEADER];
  const fromHeader = header !== undefined && header !== '' && !(Array.isArray(header) && (header.length === 0 || header[0] === ''));
  return {
    requestId: request.id,
    logger: request.log as unknown as RequestContext['logger'],
    signal: abortSignalFor(request, reply),
    deadline: Infinity,
    field: HTTP_FIELDS,
    userKey: fromHeader ? header : bodyUserKey,
    userKeyField: fromHeader ? `header.${USER_HEADER}` : 'body.user_id',
    variant: first(request.headers[VARIANT_HEADER]),
    variantField: `header.${VARIANT_HEADER}`,
    priority: first(request.headers[PRIORITY_HEADER]),
    priorityField: `header.${PRIORITY_HEADER}`,
    onVariant: (name) => void reply.header(VARIANT_HEADER, name),
  };
}

function metadataValue(cx: GrpcCallContext, key: string): string | undefined {
  const v = cx.metadata.get(key)[0];
  return typeof v === 'string' ? v : v === undefined ? undefined : v.toString('utf8');
}

/** A gRPC call as the serving layer sees it; `fieldUserKey` is the message's user_id. */
export function grpcRequestContext(cx: GrpcCallContext, fieldUserKey?: unknown): RequestContext {
  const md = metadataValue(cx, USER_HEADER);
  const fromMetadata = md !== undefined && md !== '';
  return {
    requestId: cx.requestId,
    logger: cx.logger,
    signal: cx.signal,
    deadline: cx.deadline,
    field: GRPC_FIELDS,
    userKey: fromMetadata ? md : fieldUserKey,
    userKeyField: fromMetadata ? `metadata.${USER_HEADER}` : 'user_id',
    variant: metadataValue(cx, VARIANT_HEADER),
    variantField: `metadata.${VARIANT_HEADER}`,
    priority: metadataValue(cx, PRIORITY_HEADER),
    priorityField: `metadata.${PRIORITY_HEADER}`,
  };
}

/**
 * A/B routing for an HTTP route with no service of its own: the router picks the variant, names it
 * in the x-catskim-variant header (also on errors) and in a `variant` field, measures it, records
 * the impression and mirrors shadows. Without a router the request runs as is.
 */
export async function routeHttp<T extends object>(
  experiments: ExperimentsLink,
  route: Route,
  request: FastifyRequest,
  reply: FastifyReply,
  opts: { explicitModel?: string; bodyUserKey?: unknown; query?: string },
  run: (variant: VariantDef | undefined, role: Role, requestId: string) => Promise<T>,
  describe?: (res: T) => { resultIds?: readonly string[] },
): Promise<T & { variant?: string }> {
  const rc = httpRequestContext(request, reply, opts.bodyUserKey);
  const { result, variant } = await routed(experiments, route, rc, { explicitModel: opts.explicitModel, query: opts.query }, run, describe);
  return variant ? { ...result, variant } : result;
}
