/**
 * One-call A/B routing for the transports. A route hands over what it would run and gets back
 * the result (unchanged, plus the variant's name) while the router picks the variant, names it
 * in the response, measures it, records the impression and mirrors shadow traffic.
 *
 * HTTP (fastify handler):
 *   return routeHttp(ctx.registry, 'search', request, reply, { explicitModel: body.model, bodyUserKey: body.user_id, query: body.query },
 *     (variant) => this.search({ ...body, model: variant?.search?.model ?? body.model }, request.id),
 *     (res) => ({ resultIds: res.results.map((r) => r.id) }));
 *   -> response header x-catskim-variant (also on errors) and a `variant` field (add it to the route's response schema).
 *
 * gRPC (inside a grpcHandlers wrapper):
 *   const { result, variant } = await routeGrpc(ctx.registry, 'generate', req.userId, cx, { explicitModel: req.model }, (variant) => ...);
 *   -> put `variant` in the response message (GenerateResponse.variant = 20).
 *
 * User key: header/metadata `x-user-id`, else the request's own field. Override: `x-catskim-variant`.
 * Without the experiments capability (no router) both run the request as is.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Registry } from 'prom-client';
import type { GrpcCallContext } from '../grpc.js';
import type { Route, VariantDef } from './config.js';
import { ExperimentRouter, type Assignment, type Role } from './router.js';

export const USER_HEADER = 'x-user-id';
export const VARIANT_HEADER = 'x-catskim-variant';

type Run<T> = (variant: VariantDef | undefined, role: Role, requestId: string) => Promise<T>;
type Describe<T> = (res: T) => { resultIds?: readonly string[] };

export interface RouteOptions {
  /** The request named its own model (then it does not join the experiment). */
  explicitModel?: string;
  explicitModelField?: string;
  /** The request body's own user key field (the header wins). */
  bodyUserKey?: unknown;
  bodyUserKeyField?: string;
  /** Stored with the impression. */
  query?: string;
}

export async function routeHttp<T extends object>(
  registry: Registry,
  route: Route,
  request: FastifyRequest,
  reply: FastifyReply,
  opts: RouteOptions,
  run: Run<T>,
  describe?: Describe<T>,
): Promise<T & { variant?: string }> {
  const router = ExperimentRouter.get(registry);
  if (!router) return run(undefined, 'primary', request.id);
  const userKey =
    ExperimentRouter.userKey(request.headers[USER_HEADER], `header.${USER_HEADER}`) ?? ExperimentRouter.userKey(opts.bodyUserKey, opts.bodyUserKeyField ?? 'body.user_id');
  const ov = request.headers[VARIANT_HEADER];
  const override = Array.isArray(ov) ? ov[0] : ov;
  const { result, assignment } = await router.routeRequest(
    route,
    { userKey, override: override?.trim(), overrideField: `header.${VARIANT_HEADER}`, explicitModel: opts.explicitModel, explicitModelField: opts.explicitModelField ?? 'body.model', requestId: request.id, query: opts.query },
    run,
    describe,
    (a) => {
      if (a?.variant) reply.header(VARIANT_HEADER, a.variant.name);
    },
  );
  return assignment?.variant ? { ...result, variant: assignment.variant.name } : result;
}

export async function routeGrpc<T>(
  registry: Registry,
  route: Route,
  fieldUserKey: unknown,
  cx: GrpcCallContext,
  opts: RouteOptions,
  run: Run<T>,
  describe?: Describe<T>,
  onAssigned?: (a: Assignment | undefined) => void,
): Promise<{ result: T; variant: string; assignment?: Assignment }> {
  const router = ExperimentRouter.get(registry);
  if (!router) return { result: await run(undefined, 'primary', cx.requestId), variant: '' };
  const md = (k: string) => {
    const v = cx.metadata.get(k)[0];
    return typeof v === 'string' ? v : v === undefined ? undefined : v.toString('utf8');
  };
  const userKey = ExperimentRouter.userKey(md(USER_HEADER), `metadata.${USER_HEADER}`) ?? ExperimentRouter.userKey(fieldUserKey, opts.bodyUserKeyField ?? 'user_id');
  const { result, assignment } = await router.routeRequest(
    route,
    { userKey, override: md(VARIANT_HEADER)?.trim(), overrideField: `metadata.${VARIANT_HEADER}`, explicitModel: opts.explicitModel || undefined, explicitModelField: opts.explicitModelField ?? 'model', requestId: cx.requestId, query: opts.query },
    run,
    describe,
    onAssigned,
  );
  return { result, variant: assignment?.variant?.name ?? '', assignment };
}
