/**
 * GET /v1/admin/experiments/:name/report (bearer token, read-only): one experiment's live report
 * for the console: per variant requests, CTR with its 95% Wilson interval, mean reward, p50/p99
 * and errors (report.ts, from the feedback database after flushing what is queued), plus the
 * guard rail's state (its limits, each variant's current window, this experiment's rollbacks).
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { NotFoundError } from '../../common/errors.js';
import { ERROR_SCHEMA_ID, errorResponses } from '../http.js';
import type { ExperimentReport, ReportOptions } from '../../serving/experiments/report.js';
import type { ExperimentRouter } from '../../serving/experiments/router.js';
import type { FeedbackStore } from '../../serving/experiments/store.js';

export interface ReportRouteDeps {
  checkAdmin(request: FastifyRequest): void;
  router: ExperimentRouter;
  store: FeedbackStore | undefined;
  /** The report from wherever the feedback is stored (the SQLite file, or every replica's rows in PostgreSQL). */
  report(opts: ReportOptions): Promise<ExperimentReport[]>;
}

const errorRef = { $ref: `${ERROR_SCHEMA_ID}#` } as const;

export function registerReportRoute(app: FastifyInstance, deps: ReportRouteDeps): void {
  app.get(
    '/v1/admin/experiments/:name/report',
    {
      preValidation: async (request) => deps.checkAdmin(request),
      schema: {
        summary: "One experiment's live report: per variant requests, CTR with 95% interval, reward, p50/p99, errors, and the guard rail's state (bearer token)",
        tags: ['admin'],
        params: { type: 'object', required: ['name'], properties: { name: { type: 'string', minLength: 1, maxLength: 64 } } },
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { since_s: { type: 'integer', minimum: 1, maximum: 366 * 86400, description: 'only traffic of the last since_s seconds (default: all)' } },
        },
        response: { 200: { type: 'object', additionalProperties: true }, ...errorResponses, 401: errorRef, 403: errorRef },
      },
    },
    async (request) => {
      const { name } = request.params as { name: string };
      const { since_s } = request.query as { since_s?: number };
      const def = deps.router.get(name);
      if (!def) throw new NotFoundError(`no experiment "${name}"`, 'params.name');
      let report: ExperimentReport | null = null;
      let reportUnavailable: string | undefined;
      if (!deps.store) reportUnavailable = 'feedback is off (experiments.feedback=false): no impressions are recorded';
      else if (!deps.store.available) reportUnavailable = `the feedback database is unavailable (${deps.store.unavailableReason})`;
      else {
        await deps.store.flush();
        report = (await deps.report({ experiment: name, since: since_s ? Date.now() - since_s * 1000 : undefined }))[0] ?? null;
      }
      return {
        experiment: name,
        route: def.route,
        control: def.control,
        weights: def.weights,
        report,
        ...(reportUnavailable ? { report_unavailable: reportUnavailable } : {}),
        guard: {
          limits: def.guard ?? null,
          windows: deps.router.guardWindows(name),
          rollbacks: deps.router.rollbacks.filter((r) => r.experiment === name),
        },
      };
    },
  );
}
