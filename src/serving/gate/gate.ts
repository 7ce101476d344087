/**
 * The OOD gate: one stage any route can call before it does its work.
 *
 *   const gate = ctx.gate;                                         // one per server, built by startServer
 *   const decision = await gate.check('search', body.query, { variant });
 *   // throws FailedPreconditionError (HTTP 422 / gRPC FAILED_PRECONDITION) when the policy is reject
 *   // decision === undefined: gating is off for this route (detector.enabled=false or action=off)
 *   // decision.fallbackTo: serve this request with that variant/model instead
 *   reply.ood = decision?.ood                                     // put it in every response
 *
 * The detector (src/engine/detector.ts) gives P(OOD) = probs[K] and the top ID label with its own
 * softmax probability; the input is gated when P(OOD) > tau (tau from the detector manifest, chosen
 * at 95% ID TPR on held-out validation data, or the route/variant override).
 */
import { join, isAbsolute } from 'node:path';
import type { Logger } from 'pino';
import { Gauge, type Registry } from 'prom-client';
import { Detector, type DetectorOutput } from '../../engine/detector.js';
import { FailedPreconditionError, UnavailableError } from '../../common/errors.js';
import type { OnnxConfig } from '../../engine/session.js';
import { counter, histogram } from '../../common/metrics.js';
import type { Reloader } from '../reload.js';
import { flagInsteadSetting, type DetectorConfig, type GateAction, type GatePolicy, type GateRoute } from './config.js';

/** What every search and generation response carries as `ood`. */
export interface OodInfo {
  /** P(OOD): the detector's softmax value of its OOD class. */
  score: number;
  /** Threshold in force: gated iff score > tau. */
  tau: number;
  gated: boolean;
  /** The route/variant policy: reject | flag | fallback (reject never reaches a response). */
  action: GateAction;
  /** Top in-distribution class of the detector. */
  label: string;
  /** P(label | in distribution): the detector's id_probs value (softmax over the K ID classes, temperature-scaled on validation). */
  label_prob: number;
  /** Set when the request was served by the fallback variant/model. */
  fallback_to?: string;
}

export type GateOutcome = 'pass' | 'flagged' | 'rejected' | 'fallback';

export interface GateDecision {
  readonly ood: OodInfo;
  readonly outcome: GateOutcome;
  /** Serve with this variant/model instead (outcome 'fallback'). */
  readonly fallbackTo?: string;
  /** The detector's whole output (all K+1 probabilities). */
  readonly output: DetectorOutput;
}

export interface ResolvedPolicy {
  readonly route: GateRoute;
  readonly variant: string;
  readonly detector: string;
  readonly action: GateAction;
  /** undefined = the detector's own tau. */
  readonly tau?: number;
  readonly fallback?: string;
}

export class Gate {
  readonly config: DetectorConfig;
  private readonly modelsDir: string;
  private readonly onnx: OnnxConfig;
  private readonly logger: Logger;
  private readonly detectors = new Map<string, Detector>();
  private starting: Promise<void> | undefined;
  private closed = false;
  private readonly decisions;
  private readonly scores;
  private readonly runSeconds;
  private readonly batchSize;

  private readonly reloader: Reloader | undefined;

  constructor(config: DetectorConfig, opts: { modelsDir: string; onnx: OnnxConfig; logger: Logger; registry: Registry; reloader?: Reloader }) {
    this.config = config;
    this.reloader = opts.reloader;
    this.modelsDir = opts.modelsDir;
    this.onnx = opts.onnx;
    this.logger = opts.logger.child({ component: 'gate' });
    const reg = opts.registry;
    this.decisions = counter(reg, 'catskim_gate_decisions_total', 'OOD gate decisions by route, variant and outcome (pass|flagged|rejected|fallback|error)', ['route', 'variant', 'outcome']);
    this.scores = histogram(reg, 'catskim_gate_ood_score', 'OOD score P(OOD) of gated-route inputs', ['route', 'detector'], [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1]);
    this.runSeconds = histogram(reg, 'catskim_detector_run_seconds', 'OOD detector session.run time per batch', ['detector']);
    this.batchSize = histogram(reg, 'catskim_detector_batch_size', 'Inputs per OOD detector run', ['detector'], [1, 2, 4, 8, 16, 32, 64, 128, 256]);
    const detectors = this.detectors;
    if (!reg.getSingleMetric('catskim_detector_queue_depth')) {
      new Gauge({
        name: 'catskim_detector_queue_depth',
        help: 'Inputs waiting for an OOD detector run',
        labelNames: ['detector'],
        registers: [reg],
        collect() {
          for (const [name, d] of detectors) this.set({ detector: name }, d.queued);
        },
      });
    }
  }

  /** Detector names some route uses. */
  neededDetectors(): string[] {
    if (!this.config.enabled) return [];
    const names = new Set<string>();
    for (const rc of Object.values(this.config.routes)) {
      if (rc.action !== 'off') names.add(rc.detector);
      for (const v of Object.values(rc.variants)) if ((v.action ?? rc.action) !== 'off') names.add(v.detector ?? rc.detector);
    }
    return [...names];
  }

  /** Load every needed detector and warm each up with a real inference (memoised). */
  start(): Promise<void> {
    if (!this.starting) {
      this.starting = this.load().catch((e) => {
        this.starting = undefined; // allow a retry
        throw e;
      });
    }
    return this.starting;
  }

  private async load(): Promise<void> {
    for (const name of this.neededDetectors()) {
      if (this.detectors.has(name)) continue;
      this.detectors.set(name, await this.loadDetector(name, this.config.verifySha256));
      this.reloader?.register({ kind: 'detector', name, version: () => this.detectors.get(name)?.manifest.sha256.slice(0, 12) ?? '', reload: () => this.reloadDetector(name) });
    }
  }

  /** Load one detector from its directory and warm it up with a real inference. */
  private async loadDetector(name: string, verifySha256: boolean): Promise<Detector> {
    const rel = this.config.detectors[name]!;
    const dir = isAbsolute(rel) ? rel : join(this.modelsDir, rel);
    const det = await Detector.load(dir, {
      onnx: this.onnx,
      logger: this.logger,
      name: `detector/${name}`,
      verifySha256,
      maxBatch: this.config.maxBatch,
      maxQueue: this.config.maxQueue,
    });
    let ms: number;
    try {
      ({ ms } = await det.warmup());
    } catch (e) {
      await det.close();
      throw e;
    }
    det.onRun = (batch, seconds) => {
      this.runSeconds.observe({ detector: name }, seconds);
      this.batchSize.observe({ detector: name }, batch);
    };
    this.logger.info({ detector: name, dir, classes: det.classes, tau: det.tau, sha256: det.manifest.sha256, warmupMs: Math.round(ms * 100) / 100 }, 'OOD detector loaded');
    return det;
  }

  /** Hot reload (issue 16): checksums verified, warmed up, then swapped in; the old one finishes its queue and closes. */
  private async reloadDetector(name: string): Promise<string> {
    if (this.closed) throw new Error('the OOD gate is closed');
    const fresh = await this.loadDetector(name, true);
    const old = this.detectors.get(name);
    this.detectors.set(name, fresh);
    void old?.close();
    return fresh.manifest.sha256.slice(0, 12);
  }

  get started(): boolean {
    return this.neededDetectors().every((n) => this.detectors.has(n));
  }

  detector(name: string): Detector | undefined {
    return this.detectors.get(name);
  }

  /** The policy in force for a route and variant (variant overrides on top of the route's). */
  policy(route: GateRoute, variant = ''): ResolvedPolicy {
    const rc = this.config.routes[route];
    const v: Partial<GatePolicy> = (variant && rc.variants[variant]) || {};
    return {
      route,
      variant,
      detector: v.detector ?? rc.detector,
      action: this.config.enabled ? (v.action ?? rc.action) : 'off',
      tau: v.tau ?? rc.tau,
      fallback: v.fallback ?? rc.fallback,
    };
  }

  /**
   * Run the detector on `text` and apply the route/variant policy. Returns undefined when gating is
   * off for it. Throws FailedPreconditionError (with the OOD result in `details.ood`) on reject.
   */
  async check(route: GateRoute, text: string, opts: { variant?: string } = {}): Promise<GateDecision | undefined> {
    const p = this.policy(route, opts.variant ?? '');
    if (p.action === 'off') return undefined;
    const variantLabel = p.variant || 'default';
    if (this.closed) throw new UnavailableError('the OOD gate is closed (server draining)');
    let det = this.detectors.get(p.detector);
    if (!det) {
      // The detector capability normally loads everything in start(); load lazily otherwise.
      await this.start();
      det = this.detectors.get(p.detector);
      if (!det) throw new UnavailableError(`OOD detector "${p.detector}" is not loaded`);
    }
    let out: DetectorOutput;
    try {
      out = await det.classify(text);
    } catch (e) {
      this.decisions.inc({ route, variant: variantLabel, outcome: 'error' });
      throw e;
    }
    const tau = p.tau ?? det.tau;
    const gated = out.score > tau;
    this.scores.observe({ route, detector: p.detector }, out.score);
    const ood: OodInfo = { score: out.score, tau, gated, action: p.action, label: out.label, label_prob: out.labelProb };
    let outcome: GateOutcome = 'pass';
    let fallbackTo: string | undefined;
    if (gated) {
      if (p.action === 'reject') {
        this.decisions.inc({ route, variant: variantLabel, outcome: 'rejected' });
        const setting = flagInsteadSetting(route, p.variant && this.config.routes[route].variants[p.variant]?.action === 'reject' ? p.variant : undefined);
        throw new FailedPreconditionError(
          `input is out of distribution for ${route}${p.variant ? ` (variant ${p.variant})` : ''}: OOD score ${out.score.toFixed(4)} > tau ${tau.toFixed(4)} (detector ${p.detector}); to serve such inputs flagged instead, set ${setting}`,
          { ood, route, variant: p.variant, detector: p.detector, score: out.score, tau, setting },
        );
      }
      if (p.action === 'fallback' && p.fallback) {
        outcome = 'fallback';
        fallbackTo = p.fallback;
        ood.fallback_to = p.fallback;
      } else {
        outcome = 'flagged';
      }
    }
    this.decisions.inc({ route, variant: variantLabel, outcome });
    return { ood, outcome, fallbackTo, output: out };
  }

  /** Wait for queued detector work. */
  async drain(): Promise<void> {
    await Promise.all([...this.detectors.values()].map((d) => d.idle()));
  }

  async close(): Promise<void> {
    this.closed = true;
    const ds = [...this.detectors.values()];
    this.detectors.clear();
    await Promise.all(ds.map((d) => d.close()));
  }
}
