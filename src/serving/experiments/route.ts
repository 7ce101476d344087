/**
 * A/B routing step of the serving pipeline: the request context's user key and forced variant go
 * to the server's router (if any), which picks the variant, measures it, records the impression and
 * mirrors shadow traffic. Without a router the work runs as is.
 */
import type { RequestContext } from '../context.js';
import type { Route, VariantDef } from './config.js';
import { ExperimentRouter, type ExperimentsLink, type Role } from './router.js';

export interface RouteOptions {
  /** The request named its own model (then it does not join the experiment). */
  readonly explicitModel?: string;
  /** A generation request named its own chunk size (then it does not join the experiment either). */
  readonly explicitChunkSize?: number;
  /** Stored with the impression (search: the query text). */
  readonly query?: string;
}

export async function routed<T>(
  link: ExperimentsLink,
  route: Route,
  rc: RequestContext,
  opts: RouteOptions,
  run: (variant: VariantDef | undefined, role: Role, requestId: string) => Promise<T>,
  describe?: (res: T) => { resultIds?: readonly string[] },
): Promise<{ result: T; variant: string }> {
  const router = link.router;
  if (!router) return { result: await run(undefined, 'primary', rc.requestId), variant: '' };
  const userKey = ExperimentRouter.userKey(rc.userKey, rc.userKeyField ?? rc.field('user_id'));
  const { result, assignment } = await router.routeRequest(
    route,
    {
      userKey,
      override: rc.variant?.trim(),
      overrideField: rc.variantField ?? 'x-catskim-variant',
      explicitModel: opts.explicitModel || undefined,
      explicitModelField: rc.field('model'),
      explicitChunkSize: opts.explicitChunkSize || undefined,
      explicitChunkSizeField: rc.field('chunk_size'),
      requestId: rc.requestId,
      query: opts.query,
    },
    run,
    describe,
    (a) => {
      if (a?.variant) rc.onVariant?.(a.variant.name);
    },
  );
  return { result, variant: assignment?.variant?.name ?? '' };
}
