/**
 * OOD detector engine: loads one bundled detector (models/detector/<domain>/: detector.onnx,
 * manifest.json, tokenizer.json + vocab.txt), tokenises with the shared text tokenizer and runs it.
 *
 * The model is a CnC classifier (arXiv 2207.13916) with K in-distribution classes plus one OOD
 * class, trained with MDCA (arXiv 2203.13834). The graph has two softmax outputs. Per input:
 *   score      = probs[oodIndex]           (P(OOD) of the K+1-way softmax; the gate compares it with
 *                                           tau: gated iff score > tau)
 *   label      = argmax of id_probs        (= argmax over the K ID classes)
 *   labelProb  = id_probs[label]           (id_probs = softmax(logits[:K] / T): renormalised over the
 *                                           K ID classes and temperature-scaled on validation inside
 *                                           the graph, so what is served is what models/detector/EVAL.md
 *                                           reports the ECE of)
 *
 * Batching: concurrent classify() calls are coalesced into one ORT run (up to maxBatch inputs; the
 * rest wait for the next run), with a bounded queue (ResourceExhaustedError when full). The graph is
 * an embedding bag + MLP: a run of a small batch costs tens of microseconds, so it runs on the main
 * thread (a worker round trip would cost more than the run; measured in test/engine/detector.test.ts
 * and reported in models/detector/EVAL.md).
 */
import { sha256File } from '../common/checksum.js';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import * as ort from 'onnxruntime-node';
import { InvalidArgumentError, ResourceExhaustedError, UnavailableError } from '../common/errors.js';
import { createSession, releaseSession, type CreatedSession, type OnnxConfig, type SessionLogger } from './session.js';
import { TextTokenizer, splitWords } from './text-tokenizer.js';

export interface DetectorManifest {
  name: string;
  kind: 'ood-detector';
  domain: string;
  version: number;
  method: string;
  model: string;
  tokenizer: string;
  golden_ids?: string;
  parity?: string;
  classes: string[];
  ood_index: number;
  num_outputs: number;
  temperature: number;
  /** Temperature of id_probs (baked into the graph; recorded here). */
  id_temperature?: number;
  preprocessing: { max_words: number; max_length: number; rule?: string };
  tau: number;
  tau_selection: Record<string, unknown>;
  validation: Record<string, unknown>;
  test?: Record<string, unknown>;
  files: Record<string, { sha256: string; bytes: number }>;
  sha256: string;
}

export interface DetectorOutput {
  /** P(OOD) = probs[oodIndex]. */
  score: number;
  /** Top in-distribution class (argmax over the K ID classes). */
  label: string;
  labelIndex: number;
  /** Calibrated P(label | input is in distribution): id_probs[label]. */
  labelProb: number;
  /** The whole K+1-way softmax (ID classes, then OOD at oodIndex). */
  probs: Float32Array;
  /** The served label distribution over the K ID classes (renormalised, temperature-scaled). */
  idProbs: Float32Array;
}

export interface DetectorLoadOptions {
  onnx: OnnxConfig;
  logger?: SessionLogger;
  /** Name for logs and session metrics (default "detector/<domain>"). */
  name?: string;
  /** Check every file listed in the manifest against its sha256 (default true). */
  verifySha256?: boolean;
  /** Most inputs in one run (default 32: a batch of 32 long KJV passages runs in about 1 ms on one CPU thread). */
  maxBatch?: number;
  /** Most inputs waiting for a run; over it classify() rejects with RESOURCE_EXHAUSTED (default 4096). */
  maxQueue?: number;
  /** Longest accepted text in UTF-16 code units (default 1 MiB); longer is INVALID_ARGUMENT. */
  maxTextLength?: number;
}

export interface DetectorStats {
  runs: number;
  inputs: number;
  /** Wall time spent inside session.run (ms, cumulative). */
  runMs: number;
  /** Wall time spent tokenising (ms, cumulative). */
  tokenizeMs: number;
}

interface Pending {
  text: string;
  resolve: (o: DetectorOutput) => void;
  reject: (e: unknown) => void;
}

/** The detector's view of a text: the first max_words normalised words joined by one space (as in models/detector/dconf.py). */
export function detectorText(text: string, maxWords: number): string {
  return splitWords(text).slice(0, maxWords).join(' ');
}


export class Detector {
  readonly dir: string;
  readonly name: string;
  readonly manifest: DetectorManifest;
  readonly tokenizer: TextTokenizer;
  readonly classes: readonly string[];
  readonly oodIndex: number;
  readonly numOutputs: number;
  /** Threshold on the OOD score chosen at 95% ID TPR on held-out validation (see manifest.tau_selection). */
  readonly tau: number;
  readonly maxWords: number;
  readonly maxBatch: number;
  readonly maxQueue: number;
  readonly maxTextLength: number;
  readonly stats: DetectorStats = { runs: 0, inputs: 0, runMs: 0, tokenizeMs: 0 };
  /** Observer called after every run (metrics): batch size and seconds inside session.run. */
  onRun?: (batch: number, seconds: number) => void;

  private created: CreatedSession | undefined;
  private queue: Pending[] = [];
  private running = false;
  private scheduled = false;
  private closed = false;
  private idleWaiters: Array<() => void> = [];

  private constructor(dir: string, manifest: DetectorManifest, tokenizer: TextTokenizer, created: CreatedSession, opts: DetectorLoadOptions) {
    this.dir = dir;
    this.manifest = manifest;
    this.tokenizer = tokenizer;
    this.created = created;
    this.name = opts.name ?? `detector/${manifest.domain}`;
    this.classes = manifest.classes;
    this.oodIndex = manifest.ood_index;
    this.numOutputs = manifest.num_outputs;
    this.tau = manifest.tau;
    this.maxWords = manifest.preprocessing.max_words;
    this.maxBatch = opts.maxBatch ?? 32;
    this.maxQueue = opts.maxQueue ?? 4096;
    this.maxTextLength = opts.maxTextLength ?? 1 << 20;
  }

  /** Load and validate a detector directory (manifest, sha256, tokenizer, ONNX session). */
  static async load(dir: string, opts: DetectorLoadOptions): Promise<Detector> {
    const root = resolve(dir);
    let manifest: DetectorManifest;
    try {
      manifest = JSON.parse(readFileSync(join(root, 'manifest.json'), 'utf8')) as DetectorManifest;
    } catch (e) {
      throw new Error(`detector ${root}: cannot read manifest.json (${(e as Error).message}); regenerate with \`npm run models:detector\``);
    }
    if (manifest.kind !== 'ood-detector') throw new Error(`detector ${root}: manifest kind is ${JSON.stringify(manifest.kind)}, expected "ood-detector"`);
    const k = manifest.classes?.length ?? 0;
    if (k < 2 || manifest.ood_index !== k || manifest.num_outputs !== k + 1) {
      throw new Error(`detector ${root}: manifest needs K >= 2 classes, ood_index = K and num_outputs = K + 1 (got ${k}, ${manifest.ood_index}, ${manifest.num_outputs})`);
    }
    if (!(manifest.tau >= 0 && manifest.tau <= 1)) throw new Error(`detector ${root}: tau ${manifest.tau} is not in [0, 1]`);
    if (opts.verifySha256 ?? true) {
      for (const [file, info] of Object.entries(manifest.files ?? {})) {
        const got = sha256File(join(root, file));
        if (got !== info.sha256) throw new Error(`detector ${root}: ${file} sha256 ${got} does not match the manifest (${info.sha256}); the file is corrupted or stale`);
      }
    }
    const tokenizer = TextTokenizer.fromFile(join(root, manifest.tokenizer));
    if (tokenizer.maxLength !== manifest.preprocessing.max_length) {
      throw new Error(`detector ${root}: tokenizer max_length ${tokenizer.maxLength} != manifest ${manifest.preprocessing.max_length}`);
    }
    const name = opts.name ?? `detector/${manifest.domain}`;
    const created = await createSession(join(root, manifest.model), opts.onnx, opts.logger, { name });
    const outs = created.session.outputNames;
    if (!outs.includes('probs') || !outs.includes('id_probs') || !created.session.inputNames.includes('input_ids') || !created.session.inputNames.includes('attention_mask')) {
      await releaseSession(created);
      throw new Error(
        `detector ${root}: graph must take input_ids/attention_mask and return probs and id_probs (has ${created.session.inputNames} -> ${outs}); regenerate with \`npm run models:detector\``,
      );
    }
    return new Detector(root, manifest, tokenizer, created, opts);
  }

  /** Run a batch now, in one ORT call (no queueing). */
  async runBatch(texts: readonly string[]): Promise<DetectorOutput[]> {
    const created = this.created;
    if (!created || this.closed) throw new UnavailableError(`${this.name} is closed`);
    if (texts.length === 0) return [];
    const t0 = performance.now();
    const enc = this.tokenizer.encodeBatch(texts.map((t) => detectorText(t, this.maxWords)));
    const t1 = performance.now();
    const dims = [enc.batch, enc.width];
    const out = await created.session.run(
      {
        input_ids: new ort.Tensor('int64', enc.inputIds, dims),
        attention_mask: new ort.Tensor('int64', enc.attentionMask, dims),
      },
      ['probs', 'id_probs'],
    );
    const t2 = performance.now();
    this.stats.runs += 1;
    this.stats.inputs += texts.length;
    this.stats.tokenizeMs += t1 - t0;
    this.stats.runMs += t2 - t1;
    this.onRun?.(texts.length, (t2 - t1) / 1000);
    const probs = out.probs.data as Float32Array;
    const idProbs = out.id_probs.data as Float32Array;
    const c = this.numOutputs;
    const k = this.oodIndex;
    if (probs.length !== texts.length * c) throw new Error(`${this.name}: probs has ${probs.length} values, expected ${texts.length} x ${c}`);
    if (idProbs.length !== texts.length * k) throw new Error(`${this.name}: id_probs has ${idProbs.length} values, expected ${texts.length} x ${k}`);
    const res: DetectorOutput[] = [];
    for (let b = 0; b < texts.length; b++) {
      const row = probs.slice(b * c, (b + 1) * c);
      const idRow = idProbs.slice(b * k, (b + 1) * k);
      let best = 0;
      for (let j = 1; j < k; j++) if (idRow[j] > idRow[best]) best = j;
      res.push({ score: row[k], label: this.classes[best], labelIndex: best, labelProb: idRow[best], probs: row, idProbs: idRow });
    }
    return res;
  }

  /** Classify one text; concurrent calls share runs of up to maxBatch inputs. */
  classify(text: string): Promise<DetectorOutput> {
    if (typeof text !== 'string') return Promise.reject(new InvalidArgumentError('text', 'must be a string'));
    if (text.length > this.maxTextLength) {
      return Promise.reject(new InvalidArgumentError('text', `is ${text.length} characters; the detector accepts at most ${this.maxTextLength}`));
    }
    if (this.closed || !this.created) return Promise.reject(new UnavailableError(`${this.name} is closed`));
    if (this.queue.length >= this.maxQueue) {
      return Promise.reject(new ResourceExhaustedError(`${this.name}: ${this.queue.length} inputs already wait for the OOD detector`, 1, { queue: this.queue.length }));
    }
    return new Promise<DetectorOutput>((resolve, reject) => {
      this.queue.push({ text, resolve, reject });
      this.schedule();
    });
  }

  /** Inputs waiting for a run. */
  get queued(): number {
    return this.queue.length;
  }

  private schedule(): void {
    if (this.running || this.scheduled || this.queue.length === 0) return;
    this.scheduled = true;
    // setImmediate: everything that arrived in this turn of the event loop joins the same run.
    setImmediate(() => {
      this.scheduled = false;
      void this.flush();
    });
  }

  private async flush(): Promise<void> {
    if (this.running || this.queue.length === 0) return;
    this.running = true;
    const batch = this.queue.splice(0, this.maxBatch);
    try {
      const outs = await this.runBatch(batch.map((p) => p.text));
      batch.forEach((p, i) => p.resolve(outs[i]));
    } catch (e) {
      for (const p of batch) p.reject(e);
    } finally {
      this.running = false;
      if (this.queue.length > 0) this.schedule();
      else for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  /** A real inference on the bundled parity texts; throws when the outputs are not a softmax. */
  async warmup(): Promise<{ ms: number }> {
    const t0 = performance.now();
    const outs = await this.runBatch(['in the beginning', 'qzxv wkpf jjrt 8#@!', '']);
    for (const o of outs) {
      const s = o.probs.reduce((a, b) => a + b, 0);
      if (!(Math.abs(s - 1) < 1e-3) || !Number.isFinite(o.score)) throw new Error(`${this.name}: warm-up output is not a softmax (sum ${s})`);
    }
    return { ms: performance.now() - t0 };
  }

  /** Resolves when nothing is queued or running. */
  idle(): Promise<void> {
    if (!this.running && this.queue.length === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  /** Finish queued work, then release the session. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.idle();
    this.closed = true;
    const c = this.created;
    this.created = undefined;
    if (c) await releaseSession(c);
  }
}
