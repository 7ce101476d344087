/**
 * The ONE ONNX Runtime session factory. Every model (CAT, SKIM, detector, tests) creates its
 * sessions here, on the main thread or inside worker threads: the inputs are a model (path or
 * bytes), a plain serialisable OnnxConfig (config.onnx; postMessage it to workers as is) and an
 * optional pino-like logger.
 *
 * onnxruntime-node does not fall back by itself: asking for ['cuda', 'cpu'] on a host without the
 * CUDA provider libraries rejects with "...AppendExecutionProvider_Cuda: Failed to load shared
 * library". We catch that, remember per thread that the provider is unavailable, log ONE warning
 * (main thread, once per provider per process; worker threads log it at info), and retry on CPU.
 * With `strict` the creation fails with that message instead (ExecutionProviderError).
 *
 * Each created session is recorded (name -> provider it actually got) so /metrics can show
 * `catskim_onnx_session_info{model,provider}`; sessions created in worker threads are recorded in
 * the worker: post `created.record` to the main thread and call `recordSession(record)` there.
 */
import { isMainThread } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import protobuf from 'protobufjs';

export const EXECUTION_PROVIDERS = ['cuda', 'tensorrt', 'cpu'] as const;
export type ExecutionProvider = (typeof EXECUTION_PROVIDERS)[number];
export const GRAPH_OPT_LEVELS = ['disabled', 'basic', 'extended', 'layout', 'all'] as const;
export type GraphOptimizationLevel = (typeof GRAPH_OPT_LEVELS)[number];

/** ONNX Runtime options; plain data, so it can be posted to worker threads as is. */
export interface OnnxConfig {
  /** Tried in order; a provider whose libraries are missing falls back to CPU unless strict. */
  providers: ExecutionProvider[];
  /** Fail instead of falling back to CPU. */
  strict: boolean;
  graphOptimizationLevel: GraphOptimizationLevel;
  /** 0 lets ONNX Runtime choose. */
  intraOpThreads: number;
  interOpThreads: number;
  /** GPU ordinal for cuda/tensorrt. */
  deviceId: number;
  /** ORT CPU arena (enableCpuMemArena); absent = ORT's default (on). */
  cpuMemArena?: boolean;
  /** ORT memory pattern planning (enableMemPattern); absent = ORT's default (on). */
  memPattern?: boolean;
}


/** The subset of a pino logger the factory uses (a pino Logger satisfies it). */
export interface SessionLogger {
  warn(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  debug(obj: object, msg?: string): void;
}

export interface SessionRecord {
  /** Model name as given by the caller (e.g. "cat-tiny/decoder"). */
  readonly name: string;
  /** The provider the session actually got (the first one that loaded). */
  readonly provider: ExecutionProvider;
  /** What config asked for. */
  readonly requested: readonly ExecutionProvider[];
  /** True when a requested provider was skipped because it could not load. */
  readonly fellBack: boolean;
  readonly loadMs: number;
  readonly createdAt: string;
}

export interface CreatedSession {
  readonly session: ort.InferenceSession;
  readonly provider: ExecutionProvider;
  readonly record: SessionRecord;
}

export interface CreateSessionExtras {
  /** Name used in logs and metrics; default: the file name or "model". */
  name?: string;
  /** Extra ORT session options (merged last; executionProviders is always ours). */
  sessionOptions?: Omit<ort.InferenceSession.SessionOptions, 'executionProviders'>;
  /** Don't record it in listSessions() (probes). */
  unrecorded?: boolean;
}

/** A requested provider cannot be loaded and onnx.strict is set. */
export class ExecutionProviderError extends Error {
  readonly provider: ExecutionProvider;
  constructor(provider: ExecutionProvider, cause: string) {
    super(
      `execution provider "${provider}" cannot be loaded and onnx.strict is set: ${cause}` +
        (provider === 'cuda' || provider === 'tensorrt'
          ? ' (install the provider libraries on a GPU host with `npm run ort:cuda`, or allow the CPU fallback with onnx.strict=false)'
          : ''),
    );
    this.name = 'ExecutionProviderError';
    this.provider = provider;
  }
}

// --- per-thread state ---------------------------------------------------------------------------

/** Providers that failed to load in this thread, with the reason. */
const unavailable = new Map<ExecutionProvider, string>();
const warned = new Set<ExecutionProvider>();
const records = new Map<string, SessionRecord>();
const listeners = new Set<(r: SessionRecord) => void>();
let ortLogLevelSet = false;

/** Sessions created (or recorded) in this thread, by name. */
export function listSessions(): SessionRecord[] {
  return [...records.values()];
}

/** Record a session created elsewhere (e.g. in a worker thread), so metrics see it. */
export function recordSession(r: SessionRecord): void {
  records.set(r.name, r);
  for (const l of listeners) l(r);
}

/** Forget a session (call when you release it). */
export function forgetSession(name: string): void {
  records.delete(name);
}

/** Called for every recorded session; returns an unsubscribe function. */
export function onSessionRecorded(listener: (r: SessionRecord) => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** Providers known (in this thread) to be unavailable, with the load error. */
export function unavailableProviders(): ReadonlyMap<ExecutionProvider, string> {
  return unavailable;
}

// --- creation -----------------------------------------------------------------------------------

const PROVIDER_ERROR = /AppendExecutionProvider_(\w+)|Failed to load shared library|backend not found|provider.*(not available|not supported)/i;

function providerFromError(msg: string, tried: readonly ExecutionProvider[]): ExecutionProvider | undefined {
  const m = /AppendExecutionProvider_(\w+)/.exec(msg);
  if (m) {
    const p = m[1].toLowerCase();
    if (p === 'cuda' || p === 'tensorrt') return p;
  }
  const b = /\[(\w+)\] backend not found/.exec(msg);
  if (b && (tried as readonly string[]).includes(b[1])) return b[1] as ExecutionProvider;
  // an unnamed provider failure: blame the first non-CPU provider tried
  return PROVIDER_ERROR.test(msg) ? tried.find((p) => p !== 'cpu') : undefined;
}

function toOrtProvider(p: ExecutionProvider, opts: OnnxConfig): ort.InferenceSession.ExecutionProviderConfig {
  switch (p) {
    case 'cuda':
      return { name: 'cuda', deviceId: opts.deviceId };
    case 'tensorrt':
      return { name: 'tensorrt', deviceId: opts.deviceId };
    default:
      return 'cpu';
  }
}

function sessionOptionsFor(providers: readonly ExecutionProvider[], opts: OnnxConfig, extra?: CreateSessionExtras): ort.InferenceSession.SessionOptions {
  const o: ort.InferenceSession.SessionOptions = {
    graphOptimizationLevel: opts.graphOptimizationLevel,
    logSeverityLevel: 3,
    ...(extra?.sessionOptions ?? {}),
    executionProviders: providers.map((p) => toOrtProvider(p, opts)),
  };
  if (opts.intraOpThreads > 0) o.intraOpNumThreads = opts.intraOpThreads;
  if (opts.interOpThreads > 0) o.interOpNumThreads = opts.interOpThreads;
  if (opts.cpuMemArena !== undefined) o.enableCpuMemArena = opts.cpuMemArena;
  if (opts.memPattern !== undefined) o.enableMemPattern = opts.memPattern;
  return o;
}

/**
 * Create an ORT session with the configured providers, falling back to CPU when a GPU provider
 * cannot be loaded (unless opts.strict). Errors unrelated to providers (bad file, bad graph) are
 * rethrown with the model name prepended.
 */
export async function createSession(model: string | Uint8Array, opts: OnnxConfig, logger?: SessionLogger, extra: CreateSessionExtras = {}): Promise<CreatedSession> {
  if (!ortLogLevelSet) {
    // ORT prints provider-load failures to stderr itself; we log them properly instead.
    ort.env.logLevel = 'fatal';
    ortLogLevelSet = true;
  }
  const name = extra.name ?? (typeof model === 'string' ? model.split('/').slice(-2).join('/') : 'model');
  const requested = [...opts.providers];
  let candidates = requested.filter((p) => !unavailable.has(p));
  let fellBack = candidates.length !== requested.length;
  if (fellBack && opts.strict) {
    const p = requested.find((x) => unavailable.has(x))!;
    throw new ExecutionProviderError(p, unavailable.get(p)!);
  }
  if (!candidates.includes('cpu') && fellBack) candidates.push('cpu');
  const t0 = performance.now();
  for (;;) {
    try {
      const options = sessionOptionsFor(candidates, opts, extra);
      const session = typeof model === 'string' ? await ort.InferenceSession.create(model, options) : await ort.InferenceSession.create(model, options);
      const provider = candidates[0];
      const record: SessionRecord = {
        name,
        provider,
        requested,
        fellBack,
        loadMs: Math.round((performance.now() - t0) * 10) / 10,
        createdAt: new Date().toISOString(),
      };
      if (!extra.unrecorded) recordSession(record);
      logger?.debug({ model: name, provider, requested, fellBack, loadMs: record.loadMs }, 'onnx session created');
      return { session, provider, record };
    } catch (e) {
      const msg = (e as Error).message ?? String(e);
      const failed = providerFromError(msg, candidates);
      if (!failed || failed === 'cpu' || !candidates.includes(failed)) {
        throw new Error(`onnx session for ${name}: ${msg}`, { cause: e });
      }
      unavailable.set(failed, msg);
      if (opts.strict) throw new ExecutionProviderError(failed, msg);
      candidates = candidates.filter((p) => p !== failed);
      if (!candidates.includes('cpu')) candidates.push('cpu');
      fellBack = true;
      warnFallback(failed, msg, candidates[0], logger);
    }
  }
}

function warnFallback(provider: ExecutionProvider, reason: string, next: ExecutionProvider, logger?: SessionLogger): void {
  if (warned.has(provider)) return;
  warned.add(provider);
  const fields = { provider, fallback: next, reason };
  const msg =
    `execution provider "${provider}" is not available (${reason}); using "${next}" instead. ` +
    'On a GPU host install the CUDA provider with `npm run ort:cuda`; set onnx.strict=true to fail instead.';
  if (!logger) {
    if (isMainThread) process.emitWarning(msg, { code: 'CATSKIM_EP_FALLBACK' });
    return;
  }
  // once per process: the main thread warns; worker threads repeat it at info level
  if (isMainThread) logger.warn(fields, msg);
  else logger.info(fields, msg);
}

/** Release a session and forget its record. */
export async function releaseSession(created: CreatedSession): Promise<void> {
  if (records.get(created.record.name) === created.record) records.delete(created.record.name);
  await created.session.release();
}

// --- probe --------------------------------------------------------------------------------------

export interface ProviderProbe {
  /** The provider sessions will get. */
  readonly provider: ExecutionProvider;
  readonly requested: readonly ExecutionProvider[];
  readonly fellBack: boolean;
  readonly unavailable: Readonly<Record<string, string>>;
}

/**
 * Find out once, at start-up and on the main thread, which requested provider loads: creates
 * and runs the tiny built-in model. Logs the one fallback warning; throws ExecutionProviderError
 * in strict mode.
 */
export async function probeExecutionProviders(opts: OnnxConfig, logger?: SessionLogger): Promise<ProviderProbe> {
  const created = await createSession(tinyAddModel(), opts, logger, { name: 'probe', unrecorded: true });
  try {
    await runTinyAddModel(created.session);
  } finally {
    await created.session.release();
  }
  return {
    provider: created.provider,
    requested: opts.providers,
    fellBack: created.record.fellBack,
    unavailable: Object.fromEntries(unavailable),
  };
}

// --- a tiny model, built without Python --------------------------------------------------------

/**
 * A minimal ONNX model: Y = X + B, X: float[N, 4], B = [1, 2, 3, 4] (initializer), opset 17.
 * Encoded directly with protobufjs' writer using field numbers from onnx.proto (ModelProto,
 * GraphProto, NodeProto, TensorProto, ValueInfoProto, TypeProto, TensorShapeProto).
 */
export function tinyAddModel(): Uint8Array {
  const W = protobuf.Writer;
  const LEN = 2;
  const VARINT = 0;
  const tag = (field: number, wire: number) => (field << 3) | wire;

  const valueInfo = (w: protobuf.Writer, field: number, name: string) => {
    w.uint32(tag(field, LEN)).fork();
    w.uint32(tag(1, LEN)).string(name); // ValueInfoProto.name
    w.uint32(tag(2, LEN)).fork(); // ValueInfoProto.type: TypeProto
    w.uint32(tag(1, LEN)).fork(); // TypeProto.tensor_type
    w.uint32(tag(1, VARINT)).int32(1); // elem_type FLOAT
    w.uint32(tag(2, LEN)).fork(); // shape: TensorShapeProto
    w.uint32(tag(1, LEN)).fork().uint32(tag(2, LEN)).string('N').ldelim(); // dim { dim_param: "N" }
    w.uint32(tag(1, LEN)).fork().uint32(tag(1, VARINT)).int64(4).ldelim(); // dim { dim_value: 4 }
    w.ldelim().ldelim().ldelim().ldelim();
  };

  const w = W.create();
  w.uint32(tag(1, VARINT)).int64(8); // ModelProto.ir_version
  w.uint32(tag(2, LEN)).string('catskim'); // producer_name
  w.uint32(tag(7, LEN)).fork(); // graph
  {
    w.uint32(tag(1, LEN)).fork(); // NodeProto
    w.uint32(tag(1, LEN)).string('X');
    w.uint32(tag(1, LEN)).string('B');
    w.uint32(tag(2, LEN)).string('Y');
    w.uint32(tag(3, LEN)).string('add');
    w.uint32(tag(4, LEN)).string('Add');
    w.ldelim();
    w.uint32(tag(2, LEN)).string('tiny_add'); // GraphProto.name
    w.uint32(tag(5, LEN)).fork(); // initializer: TensorProto
    w.uint32(tag(1, VARINT)).int64(4); // dims
    w.uint32(tag(2, VARINT)).int32(1); // data_type FLOAT
    w.uint32(tag(4, LEN)).fork().float(1).float(2).float(3).float(4).ldelim(); // float_data (packed)
    w.uint32(tag(8, LEN)).string('B'); // name
    w.ldelim();
    valueInfo(w, 11, 'X'); // input
    valueInfo(w, 12, 'Y'); // output
  }
  w.ldelim();
  w.uint32(tag(8, LEN)).fork().uint32(tag(1, LEN)).string('').uint32(tag(2, VARINT)).int64(17).ldelim(); // opset_import
  return w.finish();
}

/** Run the tiny model once and check the answer; throws when the result is wrong. */
export async function runTinyAddModel(session: ort.InferenceSession): Promise<void> {
  const x = new ort.Tensor('float32', Float32Array.from([0.5, 0.5, 0.5, 0.5, 10, 20, 30, 40]), [2, 4]);
  const out = await session.run({ X: x });
  const y = out.Y?.data as Float32Array | undefined;
  const want = [1.5, 2.5, 3.5, 4.5, 11, 22, 33, 44];
  if (!y || y.length !== want.length || want.some((v, i) => Math.abs(y[i] - v) > 1e-6)) {
    throw new Error(`tiny model warm-up returned ${y ? Array.from(y).join(',') : 'nothing'}, expected ${want.join(',')}`);
  }
}
