/**
 * The built-in "core" capability: GET /v1/info and catskim.v1.ServerInfo/GetServerInfo (version,
 * readiness, execution provider of every ONNX session), and a real warm-up: it creates an ONNX
 * session through the shared factory and runs one inference on a tiny built-in model, so even a
 * server with no model capability proves ONNX Runtime works on the configured provider.
 */
import * as ort from 'onnxruntime-node';
import { createSession, listSessions, releaseSession, runTinyAddModel, tinyAddModel, type CreatedSession } from '../engine/session.js';
import type { Capability, CapabilityContext, CapabilityFactory } from './capability.js';
import type { Config } from './config.js';
import { errorResponses } from './http.js';
import { grpcHandlers, loadProto, serviceDefinition } from './grpc.js';

export const SERVER_PROTO = 'catskim/v1/server.proto';

export interface ServerInfo {
  version: string;
  nodeVersion: string;
  onnxruntimeVersion: string;
  ready: boolean;
  notReadyReason: string;
  requestedProviders: string[];
  provider: string;
  capabilities: Array<{ name: string; ready: boolean; reason: string; services: string[] }>;
  sessions: Array<{ model: string; provider: string; requestedProviders: string[]; fellBack: boolean; loadMs: number }>;
  /** What serves now and its version (hot reload, issue 16). */
  models: Array<{ kind: string; name: string; version: string; loadedAt: string; reloads: number }>;
}

export function serverInfo(ctx: CapabilityContext<Config>): ServerInfo {
  const rt = ctx.runtime;
  const readiness = rt.readiness;
  const caps = readiness.capabilities();
  return {
    version: rt.version,
    nodeVersion: process.version,
    onnxruntimeVersion: ort.env.versions?.node ?? 'unknown',
    ready: readiness.isReady(),
    notReadyReason: readiness.reason() ?? '',
    requestedProviders: [...ctx.config.onnx.providers],
    provider: rt.probe?.provider ?? '',
    capabilities: Object.entries(caps).map(([name, s]) => ({ name, ready: s.ready, reason: s.reason ?? '', services: rt.services.get(name) ?? [] })),
    sessions: listSessions().map((s) => ({ model: s.name, provider: s.provider, requestedProviders: [...s.requested], fellBack: s.fellBack, loadMs: s.loadMs })),
    models: rt.reloader.list(),
  };
}

const infoSchema = {
  type: 'object',
  properties: {
    version: { type: 'string' },
    nodeVersion: { type: 'string' },
    onnxruntimeVersion: { type: 'string' },
    ready: { type: 'boolean' },
    notReadyReason: { type: 'string' },
    requestedProviders: { type: 'array', items: { type: 'string' } },
    provider: { type: 'string' },
    capabilities: {
      type: 'array',
      items: {
        type: 'object',
        properties: { name: { type: 'string' }, ready: { type: 'boolean' }, reason: { type: 'string' }, services: { type: 'array', items: { type: 'string' } } },
      },
    },
    sessions: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          model: { type: 'string' },
          provider: { type: 'string' },
          requestedProviders: { type: 'array', items: { type: 'string' } },
          fellBack: { type: 'boolean' },
          loadMs: { type: 'number' },
        },
      },
    },
    models: {
      type: 'array',
      items: {
        type: 'object',
        properties: { kind: { type: 'string' }, name: { type: 'string' }, version: { type: 'string' }, loadedAt: { type: 'string' }, reloads: { type: 'integer' } },
      },
    },
  },
} as const;

export const coreCapability: CapabilityFactory<Config> = (ctx) => {
  let warm: CreatedSession | undefined;
  const cap: Capability = {
    name: 'core',
    protoFiles: [SERVER_PROTO],
    registerHttp(app) {
      app.get('/v1/info', { schema: { summary: 'Server version, readiness and execution providers', response: { 200: infoSchema, ...errorResponses } } }, async () => serverInfo(ctx));
    },
    registerGrpc(server) {
      const h = grpcHandlers(ctx);
      server.addService(serviceDefinition(loadProto(SERVER_PROTO), 'catskim.v1.ServerInfo'), {
        GetServerInfo: h.unary(async () => serverInfo(ctx)),
      });
    },
    async start() {
      warm = await createSession(tinyAddModel(), ctx.config.onnx, ctx.logger, { name: 'core/warmup' });
      await runTinyAddModel(warm.session);
      ctx.logger.info({ provider: warm.provider }, 'core warm-up inference succeeded');
    },
    async drain() {},
    async close() {
      if (warm) await releaseSession(warm);
      warm = undefined;
    },
  };
  return cap;
};
