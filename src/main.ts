/** catskim server entry point: `node dist/src/main.js [--config file] [flags]` (see --help). */
import { runServerProcess } from './server/process.js';

await runServerProcess();
