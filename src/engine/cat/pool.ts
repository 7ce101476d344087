/**
 * The served models: one GenerationEngine (worker thread) per model, routing by name, the default
 * model, warm-up, drain and close. Transport-agnostic (gRPC today, HTTP can reuse it).
 */
import { readFileSync } from 'node:fs';
import { join, resolve, isAbsolute } from 'node:path';
import { sha256Hex } from '../../common/checksum.js';
import { GenerationEngine, type EngineOptions } from './engine.js';
import { encode } from '../tokenizer.js';
import type { ModelInfo } from './types.js';

export interface PoolModel {
  readonly name: string;
  readonly dir: string;
}

/** What every engine of the pool is started with (EngineOptions documents each). */
export type PoolEngineOptions = Omit<EngineOptions, 'name' | 'modelDir' | 'busyEngines'>;

export interface PoolOptions extends PoolEngineOptions {
  readonly models: readonly PoolModel[];
  readonly defaultModel: string;
  /** Base for relative model directories. */
  readonly modelsDir: string;
}

export interface ServedModel extends ModelInfo {
  readonly isDefault: boolean;
}

export class EnginePool {
  private readonly engines = new Map<string, GenerationEngine>();
  private readonly versions = new Map<string, string>();
  private draining = false;
  /** How many of this pool's engines have work: the last to go idle trims for all. */
  private readonly busyEngines = new Int32Array(new SharedArrayBuffer(4));

  private constructor(private readonly opts: PoolOptions) {}

  private dirOf(m: PoolModel): string {
    return isAbsolute(m.dir) ? m.dir : resolve(this.opts.modelsDir, m.dir);
  }

  private startEngine(m: PoolModel, verifySha256: boolean): Promise<GenerationEngine> {
    const { onnx, scheduler, limits, ticksPerMessage, idleTrimMs, logger } = this.opts;
    return GenerationEngine.start({ onnx, scheduler, limits, ticksPerMessage, idleTrimMs, logger, name: m.name, modelDir: this.dirOf(m), verifySha256, busyEngines: this.busyEngines });
  }

  /** Starts every model's worker (in order; a failure closes the ones already started). */
  static async start(opts: PoolOptions): Promise<EnginePool> {
    const pool = new EnginePool(opts);
    try {
      for (const m of opts.models) {
        const e = await pool.startEngine(m, opts.verifySha256);
        pool.engines.set(m.name, e);
        pool.versions.set(m.name, manifestVersion(pool.dirOf(m)));
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

  /** The engine for a model name ('' = default); undefined when this pool does not serve it. */
  engine(model: string): GenerationEngine | undefined {
    return this.engines.get(model === '' ? this.opts.defaultModel : model);
  }

  names(): string[] {
    return [...this.engines.keys()];
  }

  /** The served model's version: a short sha256 of its manifest (which holds every file's sha256). */
  version(model: string): string {
    return this.versions.get(model) ?? '';
  }

  /**
   * Hot reload (issue 16): start the model again from its directory with every file checked
   * against the manifest's sha256, warm it up with real generations, then route new requests to
   * it; requests already on the old engine finish there before it closes. Any failure closes the
   * replacement and leaves the old engine serving. Returns the new engine and its version.
   */
  async replace(model: string): Promise<{ engine: GenerationEngine; version: string }> {
    const m = this.opts.models.find((x) => x.name === model);
    const old = this.engines.get(model);
    if (!m || !old) throw new Error(`model "${model}" is not served`);
    if (this.draining) throw new Error('the pool is draining');
    const version = manifestVersion(this.dirOf(m));
    const fresh = await this.startEngine(m, true);
    try {
      await warmupEngine(fresh, 'In the beginning God created the heaven and the earth.');
    } catch (e) {
      await fresh.close();
      throw e;
    }
    this.engines.set(model, fresh);
    this.versions.set(model, version);
    void old.drain().then(() => old.close());
    return { engine: fresh, version };
  }

  /**
   * A real generation per model and chunk size (max_tokens = C + 1, so a chunk boundary and its
   * compress call run too); throws when any fails.
   */
  async warmup(prompt = 'In the beginning God created the heaven and the earth.'): Promise<void> {
    for (const e of this.engines.values()) await warmupEngine(e, prompt);
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

/** A real generation per chunk size (max_tokens = C + 1, so a chunk boundary and its compress call run too). */
async function warmupEngine(e: GenerationEngine, prompt: string): Promise<void> {
  const sizes = e.info.kind === 'dense' ? [0] : e.info.chunkSizes;
  const promptIds = encode(prompt);
  const greedy = { temperature: 0, topK: 0, topP: 1, seed: '0' };
  const runs = sizes.map((c) => e.generate({ promptIds, chunkSize: c, maxTokens: Math.max(2, c + 1), sampling: greedy, stops: [], deadlineMs: 0 }));
  for (const r of await Promise.all(runs)) {
    if (r.finishReason !== 'length' || r.usage.completionTokens < 1) {
      throw new Error(`warm-up of model "${e.name}" at chunk size ${r.chunkSize} ended with ${r.finishReason}${r.error ? `: ${r.error}` : ''}`);
    }
  }
}

/** A model directory's version: the first 12 hex of its manifest's sha256 ('' when unreadable). */
function manifestVersion(dir: string): string {
  try {
    return sha256Hex(readFileSync(join(dir, 'manifest.json'))).slice(0, 12);
  } catch {
    return '';
  }
}
