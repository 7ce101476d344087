/**
 * The embedded backend for run-time experiment changes: one JSON file (<experiments.dir>/state.json,
 * `{version: 1, experiments: {name: entry}}`), rewritten atomically (temp file + rename) on each
 * change. One process owns it, so there is nothing to watch.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type { ExperimentRow, ExperimentStateBackend } from './types.js';

interface StateFile {
  version: 1;
  experiments: Record<string, unknown>;
}

export class JsonExperimentState implements ExperimentStateBackend {
  readonly describe: string;

  constructor(readonly path: string) {
    this.describe = path;
  }

  /** Throws when the file exists but is not a version 1 state file. */
  private read(): StateFile {
    if (!existsSync(this.path)) return { version: 1, experiments: {} };
    const s = JSON.parse(readFileSync(this.path, 'utf8')) as StateFile;
    if (s?.version !== 1 || typeof s.experiments !== 'object' || s.experiments === null) throw new Error(`${this.path} is not a version 1 state file`);
    return s;
  }

  async loadExperiments(): Promise<ExperimentRow[]> {
    return Object.entries(this.read().experiments).map(([name, entry]) => ({ name, entry }));
  }

  async writeExperiment(row: ExperimentRow): Promise<number> {
    let s: StateFile;
    try {
      s = this.read();
    } catch {
      s = { version: 1, experiments: {} }; // an unreadable file was reported at load; replace it
    }
    s.experiments[row.name] = row.entry;
    mkdirSync(dirname(this.path), { recursive: true });
    const tmp = `${this.path}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(s, null, 2));
    renameSync(tmp, this.path);
    return 0;
  }

  watchExperiments(): () => void {
    return () => {};
  }
}
