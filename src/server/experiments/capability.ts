/**
 * The experiments capability: owns the A/B router (it sets ctx.experiments.router, which the
 * serving pipeline and the routing helpers read), the feedback store and these HTTP routes:
 *
 *   POST   /v1/feedback                       {request_id, type?: click|reward, result_id?, reward?} -> 202
 *   GET    /v1/admin/experiments              experiments, variants, shares, recent rollbacks
 *   GET    /v1/admin/experiments/:name
 *   PUT    /v1/admin/experiments/:name        create or replace (the config's format)
 *   PATCH  /v1/admin/experiments/:name        merge (weights merge per variant; shadow/guard: null removes)
 *   DELETE /v1/admin/experiments/:name
 *
 * Admin routes need `Authorization: Bearer <experiments.adminToken>`. With no token configured the
 * admin API is off and answers 403 PERMISSION_DENIED (the same convention as the label admin API;
 * a 404 would hide a misconfiguration). Missing/wrong token: 401. Changes persist in
 * <experiments.dir>/state.json and survive restarts (while the config entry they changed stays the same).
 */
import { existsSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { CatskimError, InvalidArgumentError, NotFoundError } from '../../common/errors.js';
import type { Capability, CapabilityContext, CapabilityFactory } from '../capability.js';
import { PACKAGE_ROOT, type Config } from '../config.js';
import { ERROR_SCHEMA_ID, errorResponses, requireBearerToken } from '../http.js';
import type { ExperimentDef, ExperimentsConfig } from '../../serving/experiments/config.js';
import { ExperimentRouter } from '../../serving/experiments/router.js';
import { FeedbackStore, SqliteFeedbackBackend } from '../../serving/experiments/store.js';
import { JsonExperimentState } from '../../serving/state/json-experiments.js';
import { reportFromFile, reportFromShared } from '../../serving/experiments/report.js';
import { registerReportRoute } from './report-route.js';

const errorRef = { $ref: `${ERROR_SCHEMA_ID}#` } as const;

export function experimentsDir(cfg: ExperimentsConfig): string {
  return cfg.dir ? (isAbsolute(cfg.dir) ? cfg.dir : resolve(cfg.dir)) : join(PACKAGE_ROOT, 'var', 'experiments');
}

export function feedbackDbPath(cfg: ExperimentsConfig): string {
  return join(experimentsDir(cfg), 'feedback.sqlite');
}

function shares(d: ExperimentDef): Record<string, number> {
  const t = Object.values(d.weights).reduce((s, w) => s + w, 0);
  return Object.fromEntries(Object.entries(d.weights).map(([v, w]) => [v, t > 0 ? Math.round((w / t) * 1e6) / 1e6 : 0]));
}

export class ExperimentsCapability implements Capability {
  readonly name = 'experiments';
  readonly router: ExperimentRouter;
  readonly store: FeedbackStore | undefined;
  private readonly cfg: ExperimentsConfig;

  constructor(
    private readonly ctx: CapabilityContext<Config>,
    overrides: Partial<ExperimentsConfig> = {},
  ) {
    this.cfg = { ...ctx.config.experiments, ...overrides };
    const dir = experimentsDir(this.cfg);
    // shared state (PostgreSQL): every replica's experiment changes, impressions and feedback in one place
    const shared = ctx.state;
    this.router = new ExperimentRouter(this.cfg, shared ?? new JsonExperimentState(join(dir, 'state.json')), ctx.logger, ctx.registry);
    if (this.cfg.feedback) {
      this.store = new FeedbackStore({ backend: shared ? shared.feedback : new SqliteFeedbackBackend(join(dir, 'feedback.sqlite')), maxQueue: this.cfg.maxQueue, batchSize: this.cfg.batchSize, flushMs: this.cfg.flushMs, logger: ctx.logger, registry: ctx.registry });
      this.router.store = this.store;
    }
    ctx.experiments.router = this.router;
  }

  async start(): Promise<void> {
    await this.store?.ready();
    await this.router.load();
    this.router.syncStore();
    // models named by variants but not served by this config: a request routed there fails
    const c = this.ctx.config;
    const searchModels: string[] = c.search?.enabled === false ? [] : (c.search?.models ?? []);
    const genModels: string[] = (c.generation?.models ?? []).map((m) => m.name);
    for (const v of Object.values(this.router.variants)) {
      if (v.search && !searchModels.includes(v.search.model)) this.ctx.logger.warn({ variant: v.name, model: v.search.model, served: searchModels }, 'experiments: variant names a search model this config does not serve');
      if (v.generation && !genModels.includes(v.generation.model)) this.ctx.logger.warn({ variant: v.name, model: v.generation.model, served: genModels }, 'experiments: variant names a generation model this config does not serve');
    }
    this.ctx.logger.info(
      { experiments: this.router.list().map((e) => ({ name: e.name, route: e.route, enabled: e.enabled, weights: e.weights })), feedback: this.store ? (this.store.available ? 'open' : `unavailable: ${this.store.unavailableReason}`) : 'off' },
      'experiments ready',
    );
  }

  async drain(): Promise<void> {
    await this.router.drain();
    await this.store?.flush();
  }

  async close(): Promise<void> {
    this.router.close();
    await this.store?.close();
  }

  private checkAdmin(request: FastifyRequest): void {
    requireBearerToken(request, this.cfg.adminToken, 'experiments.adminToken', 'experiments');
  }

  private view(d: ExperimentDef): Record<string, unknown> {
    return { ...d, shares: shares(d), active: this.router.active(d.route)?.name === d.name };
  }

  /** Record feedback for a request id (validated body). */
  async feedback(body: { request_id: string; type?: 'click' | 'reward'; result_id?: string; reward?: number }): Promise<Record<string, unknown>> {
    const store = this.store;
    if (!store) throw new CatskimError('FAILED_PRECONDITION', 'feedback is off (experiments.feedback=false)');
    const labels0 = { experiment: '', variant: '' };
    if (!store.available) {
      store.countFeedback(labels0, 'db_unavailable');
      throw new CatskimError('UNAVAILABLE', `feedback is not accepted: the feedback database is unavailable (${store.unavailableReason})`);
    }
    const imp = await store.lookup(body.request_id);
    if (!imp || imp.role !== 'primary') {
      store.countFeedback(labels0, 'unknown_request');
      throw new NotFoundError(`no search response with request_id "${body.request_id}" (feedback refers to the request_id of a response)`, 'body.request_id');
    }
    const labels = { experiment: imp.experiment ?? '', variant: imp.variant ?? '' };
    const type = body.type ?? (body.reward !== undefined ? 'reward' : 'click');
    if (type === 'click' && body.reward !== undefined && body.reward !== 1) {
      store.countFeedback(labels, 'invalid');
      throw new InvalidArgumentError('body.reward', 'a click is worth 1; send type "reward" for other values');
    }
    if (body.result_id !== undefined) {
      const ids = JSON.parse(imp.result_ids) as string[];
      if (!ids.includes(body.result_id)) {
        store.countFeedback(labels, 'invalid');
        throw new InvalidArgumentError('body.result_id', `was not among the results of request ${body.request_id}`);
      }
    }
    const reward = type === 'click' ? 1 : body.reward;
    if (reward === undefined) {
      store.countFeedback(labels, 'invalid');
      throw new InvalidArgumentError('body.reward', 'is required when type is "reward"');
    }
    await store.recordFeedback({ request_id: body.request_id, ts: Date.now(), kind: type, result_id: body.result_id ?? null, reward }, labels);
    return { request_id: body.request_id, accepted: true, type, reward, experiment: imp.experiment ?? undefined, variant: imp.variant ?? undefined };
  }

  registerHttp(app: FastifyInstance): void {
    const adminResponses = { ...errorResponses, 401: errorRef, 403: errorRef };
    const expSchema = { type: 'object', additionalProperties: true } as const;
    const nameParams = { type: 'object', required: ['name'], properties: { name: { type: 'string', minLength: 1, maxLength: 64 } } } as const;

    app.post(
      '/v1/feedback',
      {
        schema: {
          summary: 'Record a click or a reward for a search response (by its request_id)',
          tags: ['experiments'],
          body: {
            type: 'object',
            required: ['request_id'],
            additionalProperties: false,
            properties: {
              request_id: { type: 'string', minLength: 1, maxLength: 160 },
              type: { type: 'string', enum: ['click', 'reward'], description: 'click (reward 1; the default) or reward (any number)' },
              result_id: { type: 'string', minLength: 1, maxLength: 64, description: 'the clicked result (must be one of the response\'s results)' },
              reward: { type: 'number', minimum: -1e6, maximum: 1e6 },
            },
          },
          response: {
            202: {
              type: 'object',
              properties: { request_id: { type: 'string' }, accepted: { type: 'boolean' }, type: { type: 'string' }, reward: { type: 'number' }, experiment: { type: 'string' }, variant: { type: 'string' } },
            },
            ...errorResponses,
          },
        },
        preValidation: async (request) => {
          const b = request.body as Record<string, unknown> | null;
          if (b && typeof b === 'object') {
            for (const [k, t] of [['request_id', 'string'], ['result_id', 'string'], ['type', 'string'], ['reward', 'number']] as const) {
              if (b[k] !== undefined && typeof b[k] !== t) throw new InvalidArgumentError(`body.${k}`, `must be a JSON ${t}`);
            }
          }
        },
      },
      async (request, reply: FastifyReply) => reply.code(202).send(await this.feedback(request.body as { request_id: string })),
    );

    const admin = { preValidation: async (request: FastifyRequest) => this.checkAdmin(request) };
    // the console's per-variant CTR / p99 / guard view (report-route.ts)
    const shared = this.ctx.state;
    const dbPath = feedbackDbPath(this.cfg);
    registerReportRoute(app, {
      checkAdmin: (r) => this.checkAdmin(r),
      router: this.router,
      store: this.store,
      report: async (o) => (shared ? reportFromShared(shared, o) : existsSync(dbPath) ? reportFromFile(dbPath, o) : []),
    });
    app.get('/v1/admin/experiments', { ...admin, schema: { summary: 'Experiments, variants and recent rollbacks (bearer token)', tags: ['admin'], response: { 200: { type: 'object', additionalProperties: true }, ...adminResponses } } }, async () => ({
      experiments: this.router.list().map((d) => this.view(d)),
      variants: this.router.variants,
      rollbacks: this.router.rollbacks,
      feedback: this.store ? { available: this.store.available, reason: this.store.unavailableReason || undefined } : { available: false, reason: 'off' },
    }));
    app.get('/v1/admin/experiments/:name', { ...admin, schema: { summary: 'One experiment (bearer token)', tags: ['admin'], params: nameParams, response: { 200: expSchema, ...adminResponses } } }, async (request) => {
      const { name } = request.params as { name: string };
      const d = this.router.get(name);
      if (!d) throw new NotFoundError(`no experiment "${name}"`, 'params.name');
      return this.view(d);
    });
    app.put(
      '/v1/admin/experiments/:name',
      { ...admin, schema: { summary: 'Create or replace an experiment (bearer token)', tags: ['admin'], params: nameParams, body: { type: 'object' }, response: { 200: expSchema, 201: expSchema, ...adminResponses } } },
      async (request, reply: FastifyReply) => {
        const { name } = request.params as { name: string };
        const r = await this.router.put(name, request.body);
        return reply.code(r.created ? 201 : 200).send(this.view(r.experiment));
      },
    );
    app.patch(
      '/v1/admin/experiments/:name',
      { ...admin, schema: { summary: 'Change part of an experiment, e.g. {"weights":{"skim":90}} (bearer token)', tags: ['admin'], params: nameParams, body: { type: 'object' }, response: { 200: expSchema, ...adminResponses } } },
      async (request) => {
        const { name } = request.params as { name: string };
        return this.view(await this.router.patch(name, request.body));
      },
    );
    app.delete(
      '/v1/admin/experiments/:name',
      { ...admin, schema: { summary: 'Delete an experiment (bearer token)', tags: ['admin'], params: nameParams, response: { 200: { type: 'object', properties: { name: { type: 'string' }, deleted: { type: 'boolean' } } }, ...adminResponses } } },
      async (request) => {
        const { name } = request.params as { name: string };
        await this.router.delete(name);
        return { name, deleted: true };
      },
    );
  }
}

/** The factory for src/server/capabilities.ts; experiments.enabled=false: no routing, no routes. */
export const experimentsCapability: CapabilityFactory<Config> = (ctx) => {
  const cfg = ctx.config.experiments;
  if (!cfg?.enabled) {
    return { name: 'experiments', start: async () => ctx.logger.info('experiments: disabled (experiments.enabled=false)'), drain: async () => {}, close: async () => {} };
  }
  return new ExperimentsCapability(ctx);
};
