/**
 * The server as a process: parse flags, start, handle SIGTERM/SIGINT (drain, then exit 0),
 * log uncaught errors. main.ts calls runServerProcess(); test fixtures call it with their own
 * capabilities so the real signal handling is what gets tested.
 */
import type { Capability, CapabilityFactory } from './capability.js';
import { ConfigError, helpText, loadConfigDetailed, type Config } from './config.js';
import { createLogger } from './logger.js';
import { StartInterruptedError, VERSION, startServer, type RunningServer } from './server.js';

export interface RunProcessOptions {
  capabilities?: ReadonlyArray<CapabilityFactory<Config> | Capability>;
  argv?: readonly string[];
  env?: Readonly<Record<string, string | undefined>>;
}

/** Exit codes: 0 clean stop, 1 start-up or runtime failure, 2 bad configuration. */
export async function runServerProcess(opts: RunProcessOptions = {}): Promise<void> {
  const argv = opts.argv ?? process.argv.slice(2);
  const env = opts.env ?? process.env;

  let config: Config;
  try {
    const { config: c, args } = loadConfigDetailed({ argv, env });
    if (args.help) {
      process.stdout.write(helpText(VERSION) + '\n');
      return;
    }
    if (args.version) {
      process.stdout.write(`catskim ${VERSION}\n`);
      return;
    }
    if (args.printConfig) {
      process.stdout.write(JSON.stringify(c, null, 2) + '\n');
      return;
    }
    config = c;
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`catskim: ${e.message}\n`);
      process.stdout.write(JSON.stringify({ level: 'fatal', time: new Date().toISOString(), service: 'catskim', key: e.key, value: e.value, source: e.source, msg: e.message }) + '\n');
      process.exitCode = 2;
      return;
    }
    throw e;
  }

  const logger = createLogger(config.logLevel, undefined, VERSION);
  let server: RunningServer | undefined;
  let stopping = false;

  const stop = async (reason: string, code: number) => {
    if (stopping) return;
    stopping = true;
    try {
      if (server) await server.shutdown(reason);
    } catch (e) {
      logger.error({ err: e }, 'shutdown failed');
      code = code || 1;
    }
    logger.info({ exitCode: code, reason }, 'exiting');
    process.exit(code);
  };

  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      logger.warn({ signal: sig }, 'second signal: exiting without waiting for in-flight work');
      process.exit(1);
    }
    logger.info({ signal: sig }, 'signal received');
    void stop(`signal ${sig}`, 0);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  // SIGHUP: reload every model, detector and search index from disk (issue 16); refusals keep the old one
  process.on('SIGHUP', () => {
    if (!server || stopping) return;
    logger.info({ signal: 'SIGHUP' }, 'signal received: reloading models, detectors and search indexes');
    void server.reloader.reloadAll().then((results) => logger.info({ results }, 'SIGHUP reload finished'));
  });
  process.on('uncaughtException', (err) => {
    logger.fatal({ err }, 'uncaught exception: shutting down');
    void stop('uncaught exception', 1);
  });
  process.on('unhandledRejection', (reason) => {
    // a forgotten promise must not take every stream down; log it loudly
    logger.error({ err: reason }, 'unhandled promise rejection');
  });

  try {
    server = await startServer({ argv, env, capabilities: opts.capabilities, logger });
  } catch (e) {
    if (e instanceof ConfigError) {
      logger.fatal({ key: e.key, value: e.value, source: e.source }, e.message);
      process.exit(2);
    }
    logger.fatal({ err: e }, `start-up failed: ${(e as Error).message}`);
    process.exit(1);
  }
  if (stopping) {
    await server.shutdown('signal during start-up');
    process.exit(0);
  }
  server.ready.catch((e) => {
    // a start-up cut short by our own shutdown was logged as interrupted; it is no failure
    if (stopping || e instanceof StartInterruptedError) return;
    logger.fatal({ err: e }, `not ready: ${(e as Error).message}; shutting down`);
    void stop('start-up failed', 1);
  });
}
