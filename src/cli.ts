#!/usr/bin/env node
/** `catskim` command (package.json "bin"): the same as `node dist/src/main.js`, plus subcommands. */
// [experiments] `catskim experiment report ...` (src/server/experiments/cli.ts); anything else starts the server.
if (process.argv[2] === 'experiment') {
  const { runExperimentCli } = await import('./server/experiments/cli.js');
  process.exitCode = await runExperimentCli(process.argv.slice(3));
} else {
  await import('./main.js');
}
