/**
 * The one typed config. Layers, lowest first:
 *   built-in defaults -> optional JSON/YAML file (`--config path` or CATSKIM_CONFIG)
 *   -> environment variables -> command-line flags -> programmatic overrides (tests).
 * A bad value throws ConfigError naming the key, the value, its source and what is allowed.
 *
 * Capabilities add their own sections: see "CAPABILITY SECTIONS" below (one import, one
 * interface line, one array line; validation lives in the capability's own file and uses
 * SectionReader from ./config-schema.js).
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, extname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { ConfigError, SectionReader, type ConfigSection } from './config-schema.js';
import { generationConfigSection, type GenerationConfig } from './generation/config.js';
import { detectorConfigSection, type DetectorConfig } from './gate/config.js';
import { searchConfigSection, type SearchConfig } from './search/config.js';
import { experimentsConfigSection, type ExperimentsConfig } from './experiments/config.js';

export { ConfigError, SectionReader, type ConfigSection } from './config-schema.js';

// ---------------------------------------------------------------------------------------------
// CAPABILITY SECTIONS. To add one (e.g. generation):
//   import { generationConfigSection, type GenerationConfig } from './generation/config.js';
//   interface ConfigSections { generation: GenerationConfig }      (one line below)
//   CONFIG_SECTIONS: generationConfigSection,                         (one line below)
// ---------------------------------------------------------------------------------------------
// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface ConfigSections {
  generation: GenerationConfig;
  search: SearchConfig;
  detector: DetectorConfig;
  experiments: ExperimentsConfig;
}

export const CONFIG_SECTIONS: ReadonlyArray<ConfigSection<unknown>> = [
  generationConfigSection as ConfigSection<unknown>,
  searchConfigSection as ConfigSection<unknown>,
  detectorConfigSection as ConfigSection<unknown>,
  experimentsConfigSection as ConfigSection<unknown>,
];
// ------------------------------------- end of sections ---------------------------------------

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
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
}

export interface CoreConfig {
  host: string;
  httpPort: number;
  grpcPort: number;
  /** Absolute path of the models directory. */
  modelsDir: string;
  logLevel: LogLevel;
  onnx: OnnxConfig;
  shutdown: {
    /** Longest wait for in-flight HTTP/gRPC calls and capability drains after SIGTERM. */
    drainTimeoutMs: number;
    /** Time between readiness going false and closing listeners (lets load balancers notice). */
    preStopDelayMs: number;
  };
  admission: {
    /** Concurrent non-probe HTTP requests + gRPC calls; over it: 429 / RESOURCE_EXHAUSTED. */
    maxInFlight: number;
    /** Retry-After sent with a rejection. */
    retryAfterSeconds: number;
  };
  http: {
    bodyLimitBytes: number;
    keepAliveTimeoutMs: number;
    /** Serve the OpenAPI document of every route at /openapi.json. */
    openapi: boolean;
  };
  grpc: {
    maxReceiveMessageBytes: number;
    maxSendMessageBytes: number;
  };
}

export type Config = CoreConfig & ConfigSections;

export type DeepPartial<T> = T extends readonly (infer _U)[] ? T : T extends object ? { [K in keyof T]?: DeepPartial<T[K]> } : T;
/** What tests and embedders pass as an override (values may also be strings, as from env). */
export type ConfigInput = DeepPartial<Config> & Record<string, unknown>;

/** The package root (the directory holding catskim's package.json), independent of cwd. */
export const PACKAGE_ROOT: string = findPackageRoot(dirname(fileURLToPath(import.meta.url)));

function findPackageRoot(start: string): string {
  let dir = start;
  for (;;) {
    const pj = join(dir, 'package.json');
    if (existsSync(pj)) {
      try {
        if (JSON.parse(readFileSync(pj, 'utf8')).name === 'catskim') return dir;
      } catch {
        /* keep looking */
      }
    }
    const up = dirname(dir);
    if (up === dir) return resolve(start, '..', '..', '..');
    dir = up;
  }
}

/** Directory of the .proto files (proto/ at the package root). */
export const PROTO_DIR = join(PACKAGE_ROOT, 'proto');

// --- the core keys: [dotted key, env var, flag, default (text), description] ----------------
const CORE_KEYS: ReadonlyArray<readonly [string, string | null, string | null, string, string]> = [
  ['host', 'CATSKIM_HOST', '--host', '127.0.0.1', 'address both listeners bind (0.0.0.0 in the container)'],
  ['httpPort', 'CATSKIM_HTTP_PORT', '--http-port', '8080', 'HTTP port (0 = ephemeral; the bound port is logged)'],
  ['grpcPort', 'CATSKIM_GRPC_PORT', '--grpc-port', '50051', 'gRPC port (0 = ephemeral; the bound port is logged)'],
  ['modelsDir', 'CATSKIM_MODELS_DIR', '--models-dir', '<package>/models', 'models directory (relative paths: to cwd, or to the config file)'],
  ['logLevel', 'CATSKIM_LOG_LEVEL', '--log-level', 'info', LOG_LEVELS.join('|')],
  ['onnx.providers', 'CATSKIM_ONNX_PROVIDERS', '--providers', 'cuda,cpu', `execution providers in order (${EXECUTION_PROVIDERS.join(', ')})`],
  ['onnx.strict', 'CATSKIM_ONNX_STRICT', '--strict', 'false', 'fail start-up when a requested provider cannot load (no CPU fallback)'],
  ['onnx.graphOptimizationLevel', 'CATSKIM_ONNX_GRAPH_OPT', '--graph-opt', 'all', GRAPH_OPT_LEVELS.join('|')],
  ['onnx.intraOpThreads', 'CATSKIM_ONNX_INTRA_OP_THREADS', '--intra-op-threads', '1', 'threads inside one operator (0 = ORT default)'],
  ['onnx.interOpThreads', 'CATSKIM_ONNX_INTER_OP_THREADS', '--inter-op-threads', '1', 'threads across operators (0 = ORT default)'],
  ['onnx.deviceId', 'CATSKIM_ONNX_DEVICE_ID', '--device-id', '0', 'GPU ordinal for cuda/tensorrt'],
  ['shutdown.drainTimeoutMs', 'CATSKIM_DRAIN_TIMEOUT_MS', '--drain-timeout-ms', '30000', 'max wait for in-flight work on SIGTERM/SIGINT'],
  ['shutdown.preStopDelayMs', 'CATSKIM_PRESTOP_DELAY_MS', null, '0', 'delay between readiness=false and closing listeners'],
  ['admission.maxInFlight', 'CATSKIM_MAX_IN_FLIGHT', '--max-in-flight', '1024', 'concurrent requests/calls before 429 / RESOURCE_EXHAUSTED'],
  ['admission.retryAfterSeconds', 'CATSKIM_RETRY_AFTER_SECONDS', null, '1', 'Retry-After sent when over the limit'],
  ['http.bodyLimitBytes', 'CATSKIM_HTTP_BODY_LIMIT', null, '1048576', 'largest accepted request body'],
  ['http.keepAliveTimeoutMs', 'CATSKIM_HTTP_KEEPALIVE_MS', null, '72000', 'idle keep-alive (keep above your load balancer\'s)'],
  ['http.openapi', 'CATSKIM_HTTP_OPENAPI', null, 'true', 'serve GET /openapi.json'],
  ['grpc.maxReceiveMessageBytes', 'CATSKIM_GRPC_MAX_RECV', null, '4194304', 'largest accepted gRPC message'],
  ['grpc.maxSendMessageBytes', 'CATSKIM_GRPC_MAX_SEND', null, '16777216', 'largest sent gRPC message'],
];

/** Rows for --help and the README: [key, env var, flag, default, description]. */
export function describeConfig(): Array<[string, string, string, string, string]> {
  const rows: Array<[string, string, string, string, string]> = CORE_KEYS.map(([k, e, f, d, t]) => [k, e ?? '', f ?? '', d, t]);
  for (const s of CONFIG_SECTIONS) {
    const envByKey = new Map(Object.entries(s.env ?? {}).map(([env, key]) => [key, env]));
    for (const [k, d, t] of s.describe ?? []) rows.push([`${s.name}.${k}`, envByKey.get(k) ?? '', '', d, t]);
  }
  return rows;
}

// --- validation ---------------------------------------------------------------------------------

function validateCore(root: SectionReader, defaultModelsDir: string): CoreConfig {
  const onnx = root.child('onnx');
  onnx.allowOnly(['providers', 'strict', 'graphOptimizationLevel', 'intraOpThreads', 'interOpThreads', 'deviceId']);
  const shutdown = root.child('shutdown');
  shutdown.allowOnly(['drainTimeoutMs', 'preStopDelayMs']);
  const admission = root.child('admission');
  admission.allowOnly(['maxInFlight', 'retryAfterSeconds']);
  const http = root.child('http');
  http.allowOnly(['bodyLimitBytes', 'keepAliveTimeoutMs', 'openapi']);
  const grpc = root.child('grpc');
  grpc.allowOnly(['maxReceiveMessageBytes', 'maxSendMessageBytes']);

  const host = root.string('host', '127.0.0.1', {
    nonEmpty: true,
    pattern: /^[A-Za-z0-9.:\-_[\]%]+$/,
    patternText: 'must be a hostname or an IPv4/IPv6 address (e.g. 127.0.0.1, 0.0.0.0, ::)',
  });
  const modelsDirRaw = root.string('modelsDir', defaultModelsDir, { nonEmpty: true });
  return {
    host,
    httpPort: root.int('httpPort', 8080, { min: 0, max: 65535 }),
    grpcPort: root.int('grpcPort', 50051, { min: 0, max: 65535 }),
    modelsDir: resolve(modelsDirRaw),
    logLevel: root.oneOf('logLevel', 'info', LOG_LEVELS),
    onnx: {
      providers: onnx.stringList('providers', ['cuda', 'cpu'], { allowed: EXECUTION_PROVIDERS, nonEmpty: true, unique: true }) as ExecutionProvider[],
      strict: onnx.bool('strict', false),
      graphOptimizationLevel: onnx.oneOf('graphOptimizationLevel', 'all', GRAPH_OPT_LEVELS),
      intraOpThreads: onnx.int('intraOpThreads', 1, { min: 0, max: 1024 }),
      interOpThreads: onnx.int('interOpThreads', 1, { min: 0, max: 1024 }),
      deviceId: onnx.int('deviceId', 0, { min: 0, max: 1023 }),
    },
    shutdown: {
      drainTimeoutMs: shutdown.int('drainTimeoutMs', 30_000, { min: 0, max: 3_600_000 }),
      preStopDelayMs: shutdown.int('preStopDelayMs', 0, { min: 0, max: 600_000 }),
    },
    admission: {
      maxInFlight: admission.int('maxInFlight', 1024, { min: 1, max: 1_000_000 }),
      retryAfterSeconds: admission.int('retryAfterSeconds', 1, { min: 0, max: 3600 }),
    },
    http: {
      bodyLimitBytes: http.int('bodyLimitBytes', 1 << 20, { min: 1024, max: 1 << 30 }),
      keepAliveTimeoutMs: http.int('keepAliveTimeoutMs', 72_000, { min: 0, max: 3_600_000 }),
      openapi: http.bool('openapi', true),
    },
    grpc: {
      maxReceiveMessageBytes: grpc.int('maxReceiveMessageBytes', 4 << 20, { min: 1024, max: 1 << 30 }),
      maxSendMessageBytes: grpc.int('maxSendMessageBytes', 16 << 20, { min: 1024, max: 1 << 30 }),
    },
  };
}

const CORE_TOP_KEYS = ['host', 'httpPort', 'grpcPort', 'modelsDir', 'logLevel', 'onnx', 'shutdown', 'admission', 'http', 'grpc'];

// --- layers -------------------------------------------------------------------------------------

type Tree = Record<string, unknown>;

function isPlainObject(v: unknown): v is Tree {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function setPath(tree: Tree, path: string, value: unknown): void {
  const parts = path.split('.');
  let t = tree;
  for (const p of parts.slice(0, -1)) {
    if (!isPlainObject(t[p])) t[p] = {};
    t = t[p] as Tree;
  }
  t[parts[parts.length - 1]] = value;
}

function mergeInto(target: Tree, layer: Tree, sources: Map<string, string>, source: string, prefix = ''): void {
  for (const [k, v] of Object.entries(layer)) {
    if (v === undefined) continue;
    const key = prefix ? `${prefix}.${k}` : k;
    if (isPlainObject(v)) {
      if (!isPlainObject(target[k])) target[k] = {};
      mergeInto(target[k] as Tree, v, sources, source, key);
    } else {
      target[k] = v;
      sources.set(key, source);
      // a leaf replaces a whole subtree: forget sources below it
      for (const s of [...sources.keys()]) if (s.startsWith(`${key}.`)) sources.delete(s);
    }
  }
}

function readConfigFile(path: string, source: string): Tree {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError('config', path, `must be a readable JSON or YAML file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, source);
  }
  let data: unknown;
  try {
    data = extname(path).toLowerCase() === '.json' ? JSON.parse(text) : parseYaml(text);
  } catch (e) {
    throw new ConfigError('config', path, `must be valid ${extname(path).toLowerCase() === '.json' ? 'JSON' : 'YAML/JSON'}: ${(e as Error).message.split('\n')[0]}`, source);
  }
  if (data === null || data === undefined) return {};
  if (!isPlainObject(data)) throw new ConfigError('config', path, 'must contain a mapping/object at the top level', source);
  // relative modelsDir in a file is relative to the file
  if (typeof data.modelsDir === 'string' && !isAbsolute(data.modelsDir)) data.modelsDir = resolve(dirname(path), data.modelsDir);
  return data;
}

export interface ParsedArgs {
  configPath?: string;
  layer: Tree;
  /** dotted key -> "flag --x" */
  sources: Map<string, string>;
  help: boolean;
  version: boolean;
  printConfig: boolean;
}

const BOOLEAN_FLAGS = new Set(['--strict', '--help', '-h', '--version', '--print-config']);

/** Parse command-line flags (`--flag value`, `--flag=value`, `--set a.b=c`). */
export function parseArgs(argv: readonly string[]): ParsedArgs {
  const flagToKey = new Map(CORE_KEYS.filter((r) => r[2]).map((r) => [r[2] as string, r[0]]));
  const out: ParsedArgs = { layer: {}, sources: new Map(), help: false, version: false, printConfig: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('-')) throw new ConfigError('argv', arg, 'unexpected positional argument; flags look like --http-port 8080 (see --help)', 'command line');
    const eq = arg.indexOf('=');
    const flag = eq >= 0 ? arg.slice(0, eq) : arg;
    let value: string | undefined = eq >= 0 ? arg.slice(eq + 1) : undefined;
    if (value === undefined && !BOOLEAN_FLAGS.has(flag)) {
      if (i + 1 >= argv.length) throw new ConfigError(flag, undefined, 'needs a value', 'command line');
      value = argv[++i];
    }
    switch (flag) {
      case '--help':
      case '-h':
        out.help = true;
        continue;
      case '--version':
        out.version = true;
        continue;
      case '--print-config':
        out.printConfig = true;
        continue;
      case '--config':
        out.configPath = value;
        continue;
      case '--set': {
        const m = /^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)=(.*)$/s.exec(value ?? '');
        if (!m) throw new ConfigError('--set', value, 'must look like --set section.key=value', 'command line');
        setPath(out.layer, m[1], m[2]);
        out.sources.set(m[1], `flag --set ${m[1]}`);
        continue;
      }
    }
    const key = flagToKey.get(flag);
    if (!key) {
      throw new ConfigError(flag, value, `unknown flag; known: --config, ${[...flagToKey.keys()].join(', ')}, --set key=value, --print-config, --help, --version`, 'command line');
    }
    setPath(out.layer, key, value ?? 'true');
    out.sources.set(key, `flag ${flag}`);
  }
  return out;
}

function envLayer(env: Readonly<Record<string, string | undefined>>, sources: Map<string, string>): Tree {
  const layer: Tree = {};
  const add = (name: string, key: string) => {
    const v = env[name];
    if (v === undefined) return;
    setPath(layer, key, v);
    sources.set(key, `env ${name}`);
  };
  for (const [key, name] of CORE_KEYS.map((r) => [r[0], r[1]] as const)) if (name) add(name, key);
  for (const s of CONFIG_SECTIONS) for (const [name, key] of Object.entries(s.env ?? {})) add(name, `${s.name}.${key}`);
  return layer;
}

export interface LoadConfigOptions {
  /** Command-line arguments (without node and the script). Default: none. */
  argv?: readonly string[];
  /** Environment. Default: none (pass process.env explicitly). */
  env?: Readonly<Record<string, string | undefined>>;
  /** Highest-precedence values (tests, embedders). */
  overrides?: ConfigInput;
  /** Explicit config file (wins over --config and CATSKIM_CONFIG). */
  configFile?: string;
}

/** Build the validated config from the layers. Throws ConfigError. */
export function loadConfig(opts: LoadConfigOptions = {}): Config {
  return loadConfigDetailed(opts).config;
}

export function loadConfigDetailed(opts: LoadConfigOptions = {}): { config: Config; args: ParsedArgs; configFile?: string } {
  const env = opts.env ?? {};
  const args = parseArgs(opts.argv ?? []);
  const sources = new Map<string, string>();
  const merged: Tree = {};

  const configFile = opts.configFile ?? args.configPath ?? (env.CATSKIM_CONFIG || undefined);
  if (configFile !== undefined) {
    const src = opts.configFile ? 'option configFile' : args.configPath ? 'flag --config' : 'env CATSKIM_CONFIG';
    const abs = resolve(configFile);
    mergeInto(merged, readConfigFile(abs, src), sources, `file ${abs}`);
  }
  const envSources = new Map<string, string>();
  const envTree = envLayer(env, envSources);
  mergeInto(merged, envTree, sources, 'env');
  for (const [k, s] of envSources) sources.set(k, s);
  mergeInto(merged, args.layer, sources, 'flag');
  for (const [k, s] of args.sources) sources.set(k, s);
  if (opts.overrides) mergeInto(merged, opts.overrides as Tree, sources, 'override');

  const root = SectionReader.of('', merged, sources);
  root.allowOnly([...CORE_TOP_KEYS, ...CONFIG_SECTIONS.map((s) => s.name)]);
  const core = validateCore(root, join(PACKAGE_ROOT, 'models'));
  const config: Record<string, unknown> = { ...core };
  for (const s of CONFIG_SECTIONS) config[s.name] = s.validate(root.child(s.name));
  return { config: config as unknown as Config, args, configFile: configFile && resolve(configFile) };
}

/** Text for --help. */
export function helpText(version: string): string {
  const rows = describeConfig();
  const lines = [
    `catskim ${version}: CAT generation and SKIM search over HTTP and gRPC`,
    '',
    'usage: catskim [--config file.yaml] [flags]',
    '',
    'Precedence: defaults < config file (--config / CATSKIM_CONFIG) < env < flags.',
    'Any key: --set section.key=value (e.g. --set onnx.intraOpThreads=2).',
    '',
    'key | env | flag | default | meaning',
    ...rows.map((r) => r.map((c) => c || '-').join(' | ')),
    '',
    '--print-config  print the effective config as JSON and exit',
  ];
  return lines.join('\n');
}
