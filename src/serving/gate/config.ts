/**
 * The `detector` config section: which OOD detectors load and how each route (and each variant of
 * a route) gates its inputs.
 *
 *   detector:
 *     enabled: true
 *     detectors: { search: detector/search, generation: detector/generation }   # name -> dir (relative to modelsDir)
 *     routes:
 *       search:   { detector: search,     action: flag }
 *       generate: { detector: generation, action: flag,
 *                   variants: { cat-kjv: { action: fallback, fallback: dense-kjv } } }
 *
 * Both routes flag by default: tau passes 95% of in-distribution text, so rejecting would turn away
 * about 1 in 20 genuine inputs, and modern prompts are out of the KJV distribution by design.
 * `reject` is one setting away (routes.generate.action=reject, env CATSKIM_GATE_GENERATE_ACTION).
 *
 * Actions, when the OOD score is above tau: `reject` (HTTP 422 / gRPC FAILED_PRECONDITION with the
 * score in the error details), `flag` (serve, with ood.gated = true), `fallback` (serve with the
 * variant/model named by `fallback`, ood.gated = true), `off` (the route does not run the detector).
 * `tau` overrides the detector's own threshold (manifest tau, chosen at 95% ID TPR).
 */
import { defineSection, key, type ConfigSection, type SectionReader } from '../../common/config-schema.js';

export const GATE_ACTIONS = ['reject', 'flag', 'fallback', 'off'] as const;
export type GateAction = (typeof GATE_ACTIONS)[number];
export const GATE_ROUTES = ['search', 'generate'] as const;
export type GateRoute = (typeof GATE_ROUTES)[number];

export interface GatePolicy {
  /** Detector name (a key of `detectors`). */
  readonly detector: string;
  readonly action: GateAction;
  /** Threshold on the OOD score; undefined = the detector's manifest tau. */
  readonly tau?: number;
  /** Variant (or model) that serves gated inputs when action = fallback. */
  readonly fallback?: string;
}

export interface RouteGateConfig extends GatePolicy {
  /** Per-variant overrides (variant or model name -> policy fields). */
  readonly variants: Readonly<Record<string, Partial<GatePolicy>>>;
}

export interface DetectorConfig {
  /** false: no detector loads and responses carry no `ood`. */
  readonly enabled: boolean;
  /** Detector name -> directory (relative to modelsDir) holding manifest.json + detector.onnx. */
  readonly detectors: Readonly<Record<string, string>>;
  readonly verifySha256: boolean;
  /** Most inputs per detector run (concurrent requests are batched). */
  readonly maxBatch: number;
  /** Most inputs waiting per detector; over it RESOURCE_EXHAUSTED. */
  readonly maxQueue: number;
  readonly routes: Readonly<Record<GateRoute, RouteGateConfig>>;
}

const NAME = /^[A-Za-z0-9._-]{1,64}$/;
const DEFAULT_DETECTORS: Record<string, string> = { search: 'detector/search', generation: 'detector/generation' };
const DEFAULT_ROUTES: Record<GateRoute, GatePolicy> = {
  search: { detector: 'search', action: 'flag' },
  generate: { detector: 'generation', action: 'flag' },
};

function readDetectors(r: SectionReader): Record<string, string> {
  const raw = r.raw.detectors;
  if (raw === undefined) return { ...DEFAULT_DETECTORS };
  const out: Record<string, string> = {};
  if (typeof raw === 'string') {
    // "search=detector/search,generation=detector/generation" (env / --set)
    for (const part of raw.split(',').map((s) => s.trim()).filter(Boolean)) {
      const i = part.indexOf('=');
      if (i <= 0) r.fail('detectors', raw, 'entries must be name=dir');
      out[part.slice(0, i).trim()] = part.slice(i + 1).trim();
    }
  } else if (raw && typeof raw === 'object' && !Array.isArray(raw)) {
    for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
      if (typeof v !== 'string' || v.trim() === '') r.fail(`detectors.${k}`, v, 'must be a directory (relative to modelsDir)');
      out[k] = v.trim();
    }
  } else {
    r.fail('detectors', raw, 'must map detector names to directories (or "name=dir,...")');
  }
  for (const k of Object.keys(out)) if (!NAME.test(k)) r.fail('detectors', raw, `detector name "${k}" must match [A-Za-z0-9._-]{1,64}`);
  return out;
}

function readPolicy(r: SectionReader, base: GatePolicy | undefined, detectors: Record<string, string>, partial: boolean): Partial<GatePolicy> {
  const action = r.has('action') || !partial ? r.oneOf('action', base?.action ?? 'flag', GATE_ACTIONS) : undefined;
  const detector = r.has('detector') || !partial ? r.string('detector', base?.detector ?? '', { nonEmpty: true }) : undefined;
  if (detector !== undefined && !(detector in detectors)) {
    r.fail('detector', detector, `must name a configured detector: ${Object.keys(detectors).join(', ') || '(none)'}`);
  }
  const tau = r.has('tau') ? r.number('tau', 0, { min: 0, max: 1 }) : undefined;
  const fallback = r.optionalString('fallback');
  if (fallback !== undefined && !NAME.test(fallback)) r.fail('fallback', fallback, 'must be a variant or model name ([A-Za-z0-9._-]{1,64})');
  const out: { -readonly [K in keyof GatePolicy]?: GatePolicy[K] } = {};
  if (action !== undefined) out.action = action;
  if (detector !== undefined) out.detector = detector;
  if (tau !== undefined) out.tau = tau;
  if (fallback !== undefined) out.fallback = fallback;
  return out;
}

/**
 * The one setting that makes a rejecting route (or variant) serve gated inputs flagged instead, as
 * a rejection message names it: `detector.routes.<route>.action=flag` and its env var, or the
 * variant's own setting when the reject comes from a variant override.
 */
export function flagInsteadSetting(route: GateRoute, variant?: string): string {
  if (variant) return `detector.routes.${route}.variants.${variant}.action=flag`;
  const key = `routes.${route}.action`;
  const env = detectorConfigSection.keys.find((k) => k.key === key)?.env;
  return `detector.${key}=flag${env ? ` (env ${env}=flag)` : ''}`;
}

export const detectorConfigSection: ConfigSection<DetectorConfig> = defineSection(
  'detector',
  [
    key.bool('enabled', true, 'load the OOD detectors and gate search/generate inputs (false: no `ood` in responses)', { env: 'CATSKIM_DETECTOR_ENABLED' }),
    key.custom('detectors', 'search=detector/search,generation=detector/generation', 'detector name=dir (dir relative to modelsDir)', (r) => readDetectors(r), { env: 'CATSKIM_DETECTORS' }),
    key.bool('verifySha256', true, 'check detector files against the manifest sha256 at load'),
    key.int('maxBatch', 32, 1, 4096, 'most inputs in one detector run (concurrent requests are batched)'),
    key.int('maxQueue', 4096, 1, 1_000_000, 'most inputs waiting per detector (then RESOURCE_EXHAUSTED)'),
    key.raw('routes', {}, 'gate policy per route (search, generate)'),
    key.part('routes.search.action', 'flag', 'gate action on /v1/search', { env: 'CATSKIM_GATE_SEARCH_ACTION', range: GATE_ACTIONS.join('|') }),
    key.part('routes.search.fallback', '', 'variant/model that serves gated searches when action=fallback', { env: 'CATSKIM_GATE_SEARCH_FALLBACK' }),
    key.part('routes.generate.action', 'flag', 'gate action on Generate/GenerateStream', { env: 'CATSKIM_GATE_GENERATE_ACTION', range: GATE_ACTIONS.join('|') }),
    key.part('routes.generate.fallback', '', 'variant/model that serves gated generations when action=fallback', { env: 'CATSKIM_GATE_GENERATE_FALLBACK' }),
    key.part('routes.<route>.tau', '(manifest)', 'override the detector threshold on P(OOD)', { range: '0..1' }),
    key.part('routes.<route>.variants.<name>', {}, 'per-variant overrides of action, tau, fallback, detector'),
  ],
  (v, r) => {
    const detectors = v.detectors as Record<string, string>;
    const routesR = r.child('routes');
    routesR.allowOnly([...GATE_ROUTES]);
    const routes = {} as Record<GateRoute, RouteGateConfig>;
    for (const route of GATE_ROUTES) {
      const rr = routesR.child(route);
      rr.allowOnly(['detector', 'action', 'tau', 'fallback', 'variants']);
      const base = readPolicy(rr, DEFAULT_ROUTES[route], detectors, false) as GatePolicy;
      if (base.action === 'fallback' && !base.fallback) rr.fail('fallback', undefined, 'is required when action is "fallback" (the variant or model that serves gated inputs)');
      const variants: Record<string, Partial<GatePolicy>> = {};
      const vr = rr.child('variants');
      for (const name of Object.keys(vr.raw)) {
        if (!NAME.test(name)) vr.fail(name, vr.raw[name], 'variant names must match [A-Za-z0-9._-]{1,64}');
        const one = vr.child(name);
        one.allowOnly(['detector', 'action', 'tau', 'fallback']);
        const p = readPolicy(one, base, detectors, true);
        const action = p.action ?? base.action;
        if (action === 'fallback' && !(p.fallback ?? base.fallback)) one.fail('fallback', undefined, 'is required when action is "fallback"');
        if (action === 'fallback' && (p.fallback ?? base.fallback) === name) one.fail('fallback', name, 'must name another variant than itself');
        variants[name] = p;
      }
      routes[route] = { ...base, variants };
    }
    return { ...(v as unknown as Omit<DetectorConfig, 'routes'>), routes };
  },
);
