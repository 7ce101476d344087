import { pino, type Logger, type DestinationStream } from 'pino';
import type { LogLevel } from './config.js';

export type { Logger } from 'pino';

/** JSON logs on stdout (or `destination`), ISO time, level names, service/version on every line. */
export function createLogger(level: LogLevel, destination?: DestinationStream, version = 'dev'): Logger {
  return pino(
    {
      level,
      base: { service: 'catskim', version, pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      serializers: { err: pino.stdSerializers.err, error: pino.stdSerializers.err },
    },
    destination ?? pino.destination({ dest: 1, sync: true }),
  );
}
