#!/usr/bin/env node
/** `catskim` command (package.json "bin"): the same as `node dist/src/main.js`, plus subcommands. */
// [experiments] `catskim experiment report ...` (src/server/experiments/cli.ts); anything else starts the server.
if (process.argv[2] === 'experiment') {
  const { runExperimentCli } = await import('./server/experiments/cli.js');
  process.exitCode = await runExperimentCli(process.argv.slice(3));
} else if (process.argv[2] === 'generate') {
  // `catskim generate "prompt" --chunk-size 8`: an HTTP client of a running server (src/server/generate-cli.ts)
  const { runGenerateCli } = await import('./server/generate-cli.js');
  process.exitCode = await runGenerateCli(process.argv.slice(3));
} else if (process.argv[2] === 'index') {
  // `catskim index build --out DIR` / `catskim index verify DIR` (src/index/build-cli.ts)
  const { runIndexCli } = await import('./index/build-cli.js');
  process.exitCode = await runIndexCli(process.argv.slice(3)).catch((e: Error) => {
    process.stderr.write(`\ncatskim index: ${e.message}\n`);
    return 1;
  });
} else {
  await import('./main.js');
}
