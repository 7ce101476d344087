// Runs two ONNX graphs of one contract on the same inputs in onnxruntime-node and compares every
// output (abs + rel tolerance). Input: a JSON file {a, b, tolerance: {abs, rel}, cases: [{name,
// inputs: {name: {dtype, dims, data}}}]} (written by test_decode_export.py).
//   node models/cat/compare_graphs.mjs cases.json     (exit 0 = every output of every case matches)
// Prints one JSON line per case and a summary line.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, '..', '..', 'package.json'));
const ort = require('onnxruntime-node');

const spec = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const { abs: tolAbs, rel: tolRel } = spec.tolerance;

function toTensor(t) {
  if (t.dtype === 'int64') return new ort.Tensor('int64', BigInt64Array.from(t.data.map((x) => BigInt(x))), t.dims);
  if (t.dtype === 'bool') return new ort.Tensor('bool', Uint8Array.from(t.data.map((x) => (x ? 1 : 0))), t.dims);
  return new ort.Tensor('float32', Float32Array.from(t.data), t.dims);
}

const opts = { intraOpNumThreads: 1, interOpNumThreads: 1 };
const a = await ort.InferenceSession.create(spec.a, opts);
const b = await ort.InferenceSession.create(spec.b, opts);
let failures = 0;
for (const c of spec.cases) {
  const feeds = {};
  for (const [name, t] of Object.entries(c.inputs)) feeds[name] = toTensor(t);
  const ra = await a.run(feeds);
  const rb = await b.run(feeds);
  let ok = JSON.stringify(a.outputNames) === JSON.stringify(b.outputNames);
  let worstAbs = 0;
  let worstRel = 0;
  for (const name of a.outputNames) {
    const x = ra[name];
    const y = rb[name];
    if (!y || JSON.stringify(x.dims) !== JSON.stringify(y.dims)) { ok = false; continue; }
    for (let i = 0; i < x.data.length; i++) {
      const d = Math.abs(x.data[i] - y.data[i]);
      if (!(d <= tolAbs + tolRel * Math.abs(x.data[i]))) ok = false;
      if (!(d <= worstAbs)) worstAbs = Number.isNaN(d) ? Infinity : d;
      const r = d / Math.max(Math.abs(x.data[i]), 1e-30);
      if (Math.abs(x.data[i]) > 1e-3 && r > worstRel) worstRel = r;
    }
  }
  if (!ok) failures++;
  console.log(JSON.stringify({ case: c.name, ok, max_abs_diff: worstAbs, max_rel_diff: worstRel }));
}
console.log(JSON.stringify({ summary: true, cases: spec.cases.length, failures }));
process.exit(failures === 0 && spec.cases.length > 0 ? 0 : 1);
