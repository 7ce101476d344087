// Replays models/cat/fixtures/graphs.json (random inputs + PyTorch outputs per exported graph)
// in onnxruntime-node and checks every output to abs 1e-4 + rel 1e-4.
//   node models/cat/check_onnx.mjs            (exit 0 = all graphs match)
// Prints one JSON line per case and a summary line.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, '..', '..', 'package.json'));
const ort = require('onnxruntime-node');

const fx = JSON.parse(readFileSync(join(here, 'fixtures', 'graphs.json'), 'utf8'));
const tolAbs = fx.tolerance?.abs ?? 1e-4;
const tolRel = fx.tolerance?.rel ?? 1e-4;

function toTensor(t) {
  if (t.dtype === 'int64') return new ort.Tensor('int64', BigInt64Array.from(t.data.map((x) => BigInt(x))), t.dims);
  if (t.dtype === 'bool') return new ort.Tensor('bool', Uint8Array.from(t.data.map((x) => (x ? 1 : 0))), t.dims);
  return new ort.Tensor('float32', Float32Array.from(t.data), t.dims);
}

let failures = 0;
let cases = 0;
for (const [graph, list] of Object.entries(fx.graphs)) {
  const session = await ort.InferenceSession.create(join(here, graph), { intraOpNumThreads: 1 });
  for (const c of list) {
    const feeds = {};
    for (const [name, t] of Object.entries(c.inputs)) feeds[name] = toTensor(t);
    const res = await session.run(feeds);
    let worst = 0;
    let ok = true;
    for (const [name, want] of Object.entries(c.outputs)) {
      const got = res[name];
      if (!got) { ok = false; console.log(JSON.stringify({ graph, case: c.name, missing: name })); continue; }
      if (JSON.stringify(Array.from(got.dims)) !== JSON.stringify(want.dims)) {
        ok = false;
        console.log(JSON.stringify({ graph, case: c.name, output: name, dims: got.dims, want: want.dims }));
        continue;
      }
      for (let i = 0; i < want.data.length; i++) {
        const d = Math.abs(got.data[i] - want.data[i]);
        if (!(d <= tolAbs + tolRel * Math.abs(want.data[i]))) ok = false;
        if (d > worst || Number.isNaN(d)) worst = Number.isNaN(d) ? Infinity : d;
      }
    }
    cases++;
    if (!ok) failures++;
    console.log(JSON.stringify({ graph, case: c.name, ok, max_abs_diff: worst }));
  }
}
console.log(JSON.stringify({ summary: true, cases, failures }));
process.exit(failures === 0 && cases > 0 ? 0 : 1);
