/**
 * The served models: one GenerationEngine (worker thread) per model, routing by name, the default
 * model, warm-up, drain and close. Transport-agnostic (gRPC today, HTTP can reuse it).
 */
import { resolve, isAbsolute } from 'node:path';
import { InvalidArgumentError, UnavailableError } from '../errors.js';
import { GenerationEngine, type EngineLimits, type GenerationListener, type GenerationHandle, type GenerateParams } from './engine.js';
import type { OnnxConfig, SessionLogger } from './session.js';
import type { ModelInfo, SchedulerOptions } from './types.js';

export interface PoolModel {
  readonly name: string;
  readonly dir: string;
}

export interface PoolOptions {
  readonly models: readonly PoolModel[];
  readonly defaultModel: string;
  /** Base for relative model directories. */
  readonly modelsDir: string;
  readonly onnx: OnnxConfig;
  readonly verifySha256: boolean;
  readonly scheduler: SchedulerOptions;
  readonly limits: EngineLimits;
  readonly logger?: SessionLogger;
}

export interface ServedModel extends ModelInfo {
  readonly isDefault: boolean;
}

export class EnginePool {
  private readonly engines = new Map<string, GenerationEngine>();
  private draining = false;

  private constructor(private readonly opts: PoolOptions) {}

  /** Starts every model's worker (in order; a failure closes the ones already started). */
  static async start(opts: PoolOptions): Promise<EnginePool> {
    const pool = new EnginePool(opts);
    try {
      for (const m of opts.models) {
        const dir = isAbsolute(m.dir) ? m.dir : resolve(opts.modelsDir, m.dir);
        const e = await GenerationEngine.start({
          name: m.name,
          modelDir: dir,
          onnx: opts.onnx,
          verifySha256: opts.verifySha256,
          scheduler: opts.scheduler,
          limits: opts.limits,
          logger: opts.logger,
        });
        pool.engines.set(m.name, e);
      }
    } catch (e) {
      await pool.close();
      throw e;
    }
    return pool;
  }

  get defaultModel(): string {
    return this.opts.defaultModel;
  }

  list(): ServedModel[] {
    return [...this.engines.values()].map((e) => ({ ...e.info, isDefault: e.name === this.opts.defaultModel }));
  }

  all(): GenerationEngine[] {
    return [...this.engines.values()];
  }

  /** The engine for a model name ('' = default); unknown names are INVALID_ARGUMENT listing the served ones. */
  engine(model: string): GenerationEngine {
    const name = model === '' ? this.opts.defaultModel : model;
    const e = this.engines.get(name);
    if (!e) throw new InvalidArgumentError('model', `unknown model "${model}"; served models: ${[...this.engines.keys()].join(', ')}`);
    return e;
  }

  submit(model: string, p: GenerateParams, listener?: GenerationListener): { engine: GenerationEngine; handle: GenerationHandle } {
    if (this.draining) throw new UnavailableError('generation is draining and accepts no new requests');
    const engine = this.engine(model);
    return { engine, handle: engine.submit(p, listener) };
  }

  /**
   * A real generation per model and chunk size (max_tokens = C + 1, so a chunk boundary and its
   * compress call run too); throws when any fails.
   */
  async warmup(prompt = 'In the beginning God created the heaven and the earth.'): Promise<void> {
    for (const e of this.engines.values()) {
      const sizes = e.info.kind === 'dense' ? [0] : e.info.chunkSizes;
      const runs = sizes.map((c) => e.generate({ prompt, chunkSize: c, maxTokens: Math.max(2, c + 1) }));
      for (const r of await Promise.all(runs)) {
        if (r.finishReason !== 'length' || r.usage.completionTokens < 1) {
          throw new Error(`warm-up of model "${e.name}" at chunk size ${r.chunkSize} ended with ${r.finishReason}${r.error ? `: ${r.error}` : ''}`);
        }
      }
    }
  }

  async drain(): Promise<void> {
    this.draining = true;
    await Promise.all([...this.engines.values()].map((e) => e.drain()));
  }

  async close(): Promise<void> {
    this.draining = true;
    await Promise.all([...this.engines.values()].map((e) => e.close()));
    this.engines.clear();
  }
}
