/**
 * What every model-serving service (generation, search) is wired with at construction: the
 * process-wide pieces the server builds once. Each service's own deps interface adds its config
 * section and whatever only it needs.
 */
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { OnnxConfig } from '../engine/session.js';
import type { Shedder } from './admission/queue.js';
import type { ExperimentsLink } from './experiments/router.js';
import type { Gate } from './gate/gate.js';
import type { Reloader } from './reload.js';

export interface ServiceDeps {
  /** The models directory (each service reads its own family below it). */
  readonly modelsDir: string;
  readonly onnx: OnnxConfig;
  readonly logger: Logger;
  readonly registry: Registry;
  readonly gate: Gate;
  readonly experiments: ExperimentsLink;
  /** Admission by expected wait (the service takes its own queue); none = no shedding. */
  readonly shedder?: Shedder;
  /** Hot reload: every served model is registered once it serves. */
  readonly reloader?: Reloader;
}
