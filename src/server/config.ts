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
import { ConfigError, SectionReader, defineSection, describeSection, key, type ConfigSection } from '../common/config-schema.js';
import { generationConfigSection, type GenerationConfig } from '../serving/generation/config.js';
import { detectorConfigSection, type DetectorConfig } from '../serving/gate/config.js';
import { searchConfigSection, type SearchConfig } from '../serving/search/config.js';
import { experimentsConfigSection, type ExperimentsConfig } from '../serving/experiments/config.js';
import { sheddingConfigSection, type SheddingConfig } from '../serving/admission/config.js';
import { stateConfigSection, type StateConfig } from '../serving/state/config.js';

export { ConfigError, SectionReader, type ConfigSection } from '../common/config-schema.js';

// ---------------------------------------------------------------------------------------------
// CAPABILITY SECTIONS. To add one (e.g. generation):
//   import { generationConfigSection, type GenerationConfig } from '../serving/generation/config.js';
//   interface ConfigSections { generation: GenerationConfig }      (one line below)
//   CONFIG_SECTIONS: generationConfigSection,                         (one line below)
// ---------------------------------------------------------------------------------------------
// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface ConfigSections {
  generation: GenerationConfig;
  search: SearchConfig;
  detector: DetectorConfig;
  experiments: ExperimentsConfig;
  shedding: SheddingConfig;
  state: StateConfig;
}

export const CONFIG_SECTIONS: ReadonlyArray<ConfigSection<unknown>> = [
  generationConfigSection as ConfigSection<unknown>,
  searchConfigSection as ConfigSection<unknown>,
  detectorConfigSection as ConfigSection<unknown>,
  experimentsConfigSection as ConfigSection<unknown>,
  sheddingConfigSection as ConfigSection<unknown>,
  stateConfigSection as ConfigSection<unknown>,
];
// ------------------------------------- end of sections ---------------------------------------

import { EXECUTION_PROVIDERS, GRAPH_OPT_LEVELS, type ExecutionProvider, type OnnxConfig } from '../engine/session.js';
export { EXECUTION_PROVIDERS, GRAPH_OPT_LEVELS, type ExecutionProvider, type GraphOptimizationLevel, type OnnxConfig } from '../engine/session.js';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
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
  admin: {
    /** Bearer token for /v1/admin/models/:name/reload; '' = that API is off. */
    token: string;
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
    /** Whole request head (request line + headers) must arrive within this; else 408. */
    headersTimeoutMs: number;
    /** Whole request (head + body) must arrive within this; else 408. */
    requestTimeoutMs: number;
    /** A socket with no traffic either way for this long is closed (0 = never). */
    idleTimeoutMs: number;
    /** Serve the OpenAPI document of every route at /openapi.json. */
    openapi: boolean;
  };
  grpc: {
    maxReceiveMessageBytes: number;
    maxSendMessageBytes: number;
    /** Concurrent calls (HTTP/2 streams) one connection may have; more wait in the client. */
    maxConcurrentStreams: number;
    /** A connection with no call for this long is closed. */
    maxConnectionIdleMs: number;
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

// --- the core keys (the root of the config file) ------------------------------------------------
const coreConfigSection: ConfigSection<CoreConfig> = defineSection(
  '',
  [
    key.string('host', '127.0.0.1', 'address both listeners bind (0.0.0.0 in the container)', {
      env: 'CATSKIM_HOST',
      flag: '--host',
      nonEmpty: true,
      pattern: /^[A-Za-z0-9.:\-_[\]%]+$/,
      patternText: 'must be a hostname or an IPv4/IPv6 address (e.g. 127.0.0.1, 0.0.0.0, ::)',
    }),
    key.int('httpPort', 8080, 0, 65535, 'HTTP port (0 = ephemeral; the bound port is logged)', { env: 'CATSKIM_HTTP_PORT', flag: '--http-port' }),
    key.int('grpcPort', 50051, 0, 65535, 'gRPC port (0 = ephemeral; the bound port is logged)', { env: 'CATSKIM_GRPC_PORT', flag: '--grpc-port' }),
    key.custom('modelsDir', '', 'models directory (relative paths: to cwd, or to the config file)', (r, n) => resolve(r.string(n, join(PACKAGE_ROOT, 'models'), { nonEmpty: true })), {
      env: 'CATSKIM_MODELS_DIR',
      flag: '--models-dir',
      shownDefault: '<package>/models',
    }),
    key.oneOf('logLevel', 'info', LOG_LEVELS, 'log level', { env: 'CATSKIM_LOG_LEVEL', flag: '--log-level' }),
    key.custom('onnx.providers', ['cuda', 'cpu'], 'execution providers in order', (r, n) => r.stringList(n, ['cuda', 'cpu'], { allowed: EXECUTION_PROVIDERS, nonEmpty: true, unique: true }) as ExecutionProvider[], {
      env: 'CATSKIM_ONNX_PROVIDERS',
      flag: '--providers',
      range: `list of ${EXECUTION_PROVIDERS.join(', ')}`,
    }),
    key.bool('onnx.strict', false, 'fail start-up when a requested provider cannot load (no CPU fallback)', { env: 'CATSKIM_ONNX_STRICT', flag: '--strict' }),
    key.oneOf('onnx.graphOptimizationLevel', 'all', GRAPH_OPT_LEVELS, 'ONNX Runtime graph optimisations', { env: 'CATSKIM_ONNX_GRAPH_OPT', flag: '--graph-opt' }),
    key.int('onnx.intraOpThreads', 1, 0, 1024, 'threads inside one operator (0 = ORT default)', { env: 'CATSKIM_ONNX_INTRA_OP_THREADS', flag: '--intra-op-threads' }),
    key.int('onnx.interOpThreads', 1, 0, 1024, 'threads across operators (0 = ORT default)', { env: 'CATSKIM_ONNX_INTER_OP_THREADS', flag: '--inter-op-threads' }),
    key.int('onnx.deviceId', 0, 0, 1023, 'GPU ordinal for cuda/tensorrt', { env: 'CATSKIM_ONNX_DEVICE_ID', flag: '--device-id' }),
    key.bool('onnx.cpuMemArena', true, "ORT's CPU arena: keeps each session's peak tensor memory for reuse (false: allocate per run; measured no lower after a burst, BENCHMARKS.md)", { env: 'CATSKIM_ONNX_CPU_MEM_ARENA' }),
    key.bool('onnx.memPattern', true, "ORT's memory pattern: plans one block per input shape seen (false: no per-shape plans kept)", { env: 'CATSKIM_ONNX_MEM_PATTERN' }),
    key.int('shutdown.drainTimeoutMs', 30_000, 0, 3_600_000, 'max wait for in-flight work on SIGTERM/SIGINT', { env: 'CATSKIM_DRAIN_TIMEOUT_MS', flag: '--drain-timeout-ms' }),
    key.int('shutdown.preStopDelayMs', 0, 0, 600_000, 'delay between readiness=false and closing listeners', { env: 'CATSKIM_PRESTOP_DELAY_MS' }),
    key.int('admission.maxInFlight', 1024, 1, 1_000_000, 'concurrent requests/calls before 429 / RESOURCE_EXHAUSTED', { env: 'CATSKIM_MAX_IN_FLIGHT', flag: '--max-in-flight' }),
    key.int('admission.retryAfterSeconds', 1, 0, 3600, 'Retry-After sent when over the limit', { env: 'CATSKIM_RETRY_AFTER_SECONDS' }),
    key.string('admin.token', '', 'bearer token for POST /v1/admin/models/:name/reload (empty = off; else at least 16 characters)', { env: 'CATSKIM_ADMIN_TOKEN' }),
    key.int('http.bodyLimitBytes', 1 << 20, 1024, 1 << 30, 'largest accepted request body', { env: 'CATSKIM_HTTP_BODY_LIMIT' }),
    key.int('http.keepAliveTimeoutMs', 72_000, 0, 3_600_000, "idle keep-alive (keep above your load balancer's)", { env: 'CATSKIM_HTTP_KEEPALIVE_MS' }),
    key.bool('http.openapi', true, 'serve GET /openapi.json', { env: 'CATSKIM_HTTP_OPENAPI' }),
    // slow clients (issue 16)
    key.int('http.headersTimeoutMs', 10_000, 100, 3_600_000, 'request line + headers must arrive within this (else 408)', { env: 'CATSKIM_HTTP_HEADERS_TIMEOUT_MS' }),
    key.int('http.requestTimeoutMs', 30_000, 100, 3_600_000, 'whole request, body included, must arrive within this (else 408)', { env: 'CATSKIM_HTTP_REQUEST_TIMEOUT_MS' }),
    key.int('http.idleTimeoutMs', 120_000, 0, 86_400_000, 'close a socket silent both ways this long (0 = never)', { env: 'CATSKIM_HTTP_IDLE_TIMEOUT_MS' }),
    key.int('grpc.maxReceiveMessageBytes', 4 << 20, 1024, 1 << 30, 'largest accepted gRPC message', { env: 'CATSKIM_GRPC_MAX_RECV' }),
    key.int('grpc.maxSendMessageBytes', 16 << 20, 1024, 1 << 30, 'largest sent gRPC message', { env: 'CATSKIM_GRPC_MAX_SEND' }),
    key.int('grpc.maxConcurrentStreams', 128, 1, 1_000_000, 'concurrent calls per connection (more wait in the client)', { env: 'CATSKIM_GRPC_MAX_STREAMS' }),
    key.int('grpc.maxConnectionIdleMs', 300_000, 1000, 86_400_000, 'close a connection with no call for this long', { env: 'CATSKIM_GRPC_IDLE_TIMEOUT_MS' }),
  ],
  (v, r) => {
    const c = v as unknown as CoreConfig;
    // Node requires the headers timeout not to exceed the request timeout
    if (c.admin.token !== '' && c.admin.token.length < 16) r.child('admin').fail('token', '<redacted>', 'must be at least 16 characters (or empty to turn the reload API off)');
    if (c.http.headersTimeoutMs > c.http.requestTimeoutMs) r.child('http').fail('headersTimeoutMs', c.http.headersTimeoutMs, `must not exceed http.requestTimeoutMs (${c.http.requestTimeoutMs})`);
    return c;
  },
);

/** The core keys, then every capability section. */
const ALL_SECTIONS: ReadonlyArray<ConfigSection<unknown>> = [coreConfigSection as ConfigSection<unknown>, ...CONFIG_SECTIONS];

/** Rows for --help and the README: [key, env var, flag, default, description]. */
export function describeConfig(): Array<[string, string, string, string, string]> {
  return ALL_SECTIONS.flatMap((s) => describeSection(s));
}

/** The README's configuration table (between its config-table markers; test/server/config-doc.test.ts keeps it current). */
export function configMarkdown(): string {
  const cell = (x: string) => (x ? `\`${x.replace(/\|/g, '\\|')}\`` : '');
  const text = (x: string) => x.replace(/\|/g, '\\|');
  return [
    '| key | env | flag | default | meaning |',
    '|---|---|---|---|---|',
    ...describeConfig().map(([k, e, f, d, t]) => `| ${cell(k)} | ${cell(e)} | ${cell(f)} | ${cell(d)} | ${text(t)} |`),
  ].join('\n');
}

/** Every declared key: env var -> dotted key, flag -> dotted key. */
function keyIndex(): { env: Map<string, string>; flags: Map<string, string> } {
  const env = new Map<string, string>();
  const flags = new Map<string, string>();
  for (const s of ALL_SECTIONS) {
    for (const k of s.keys) {
      const full = s.name ? `${s.name}.${k.key}` : k.key;
      if (k.env) env.set(k.env, full);
      if (k.flag) flags.set(k.flag, full);
    }
  }
  return { env, flags };
}


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
  const flagToKey = keyIndex().flags;
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
  for (const [name, key] of keyIndex().env) add(name, key);
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
  const coreTop = [...new Set(coreConfigSection.keys.map((k) => k.key.split('.')[0]!))];
  root.allowOnly([...coreTop, ...CONFIG_SECTIONS.map((s) => s.name)]);
  const core = coreConfigSection.validate(SectionReader.of('', Object.fromEntries(Object.entries(merged).filter(([k]) => coreTop.includes(k))), sources));
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
    'usage: catskim [--config file.yaml] [flags]          start the server',
    '       catskim generate "prompt" [--chunk-size 8]    generate from a running server (catskim generate --help)',
    '       catskim experiment report [options]          the A/B experiment report (catskim experiment report --help)',
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
