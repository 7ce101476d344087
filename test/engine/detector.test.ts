/**
 * The bundled OOD detectors (models/detector/{search,generation}) against the Python reference:
 * tokenizer golden ids, probs parity (1e-4), ID passes / random string gated, batching, the queue
 * bound, sha256 refusal, and the per-input latency.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Detector, detectorText } from '../../src/engine/detector.js';
import { TextTokenizer, normalizeText } from '../../src/engine/text-tokenizer.js';
import type { OnnxConfig } from '../../src/engine/session.js';
import { ResourceExhaustedError } from '../../src/common/errors.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const DOMAINS = ['search', 'generation'] as const;
const ONNX: OnnxConfig = { providers: ['cpu'], strict: false, graphOptimizationLevel: 'all', intraOpThreads: 1, interOpThreads: 1, deviceId: 0 };
const dirOf = (d: string) => join(ROOT, 'models/detector', d);

interface ParityCase {
  text: string;
  detector_text: string;
  input_ids: number[];
  attention_mask: number[];
  probs: number[];
  id_probs: number[];
  logits: number[];
}

for (const domain of DOMAINS) {
  test(`${domain} detector: tokenizer golden ids (Python)`, () => {
    const tok = TextTokenizer.fromFile(join(dirOf(domain), 'tokenizer.json'));
    const golden = JSON.parse(readFileSync(join(dirOf(domain), 'golden_ids.json'), 'utf8')) as {
      cases: Array<{ text: string; normalized: string; ids: number[]; input_ids: number[]; attention_mask: number[]; detector_text: string; detector_ids: number[] }>;
    };
    assert.ok(golden.cases.length >= 15);
    for (const c of golden.cases) {
      assert.equal(normalizeText(c.text), c.normalized);
      assert.deepEqual(tok.ids(c.text), c.ids, JSON.stringify(c.text));
      const enc = tok.encode(c.text, { padTo: tok.maxLength });
      assert.deepEqual(enc.inputIds, c.input_ids);
      assert.deepEqual(enc.attentionMask, c.attention_mask);
      assert.equal(detectorText(c.text, 64), c.detector_text);
      assert.deepEqual(tok.ids(c.detector_text).slice(0, tok.maxLength), c.detector_ids);
    }
  });

  test(`${domain} detector: probs match the Python reference within 1e-4`, async () => {
    const det = await Detector.load(dirOf(domain), { onnx: ONNX });
    try {
      const parity = JSON.parse(readFileSync(join(dirOf(domain), 'parity.json'), 'utf8')) as { tolerance: number; ood_index: number; id_temperature: number; cases: ParityCase[] };
      assert.equal(parity.id_temperature, det.manifest.id_temperature);
      assert.equal(parity.ood_index, det.oodIndex);
      assert.ok(parity.cases.length >= 8);
      // tokens first (same ids as Python), then probabilities, one batch with mixed lengths
      for (const c of parity.cases) {
        assert.equal(detectorText(c.text, det.maxWords), c.detector_text);
        const ids = det.tokenizer.ids(c.detector_text).slice(0, det.tokenizer.maxLength);
        assert.deepEqual(ids, c.input_ids.filter((_, i) => c.attention_mask[i] === 1));
      }
      const outs = await det.runBatch(parity.cases.map((c) => c.text));
      let worst = 0;
      outs.forEach((o, i) => {
        const c = parity.cases[i];
        assert.equal(o.probs.length, c.probs.length);
        assert.equal(o.idProbs.length, det.oodIndex);
        for (let j = 0; j < c.probs.length; j++) worst = Math.max(worst, Math.abs(o.probs[j] - c.probs[j]));
        for (let j = 0; j < c.id_probs.length; j++) worst = Math.max(worst, Math.abs(o.idProbs[j] - c.id_probs[j]));
        assert.equal(o.score, o.probs[det.oodIndex]);
        // The served label probability is id_probs: softmax over the K ID logits / T (Python's logits, T from the manifest).
        const z = c.logits.slice(0, det.oodIndex).map((x) => x / parity.id_temperature);
        const zmax = Math.max(...z);
        const ez = z.map((x) => Math.exp(x - zmax));
        const sum = ez.reduce((a, b) => a + b, 0);
        const served = ez.map((x) => x / sum);
        const best = served.indexOf(Math.max(...served));
        assert.equal(o.label, det.classes[best]);
        assert.equal(o.labelProb, o.idProbs[best]);
        assert.ok(Math.abs(o.labelProb - served[best]) <= 1e-4, `label_prob ${o.labelProb} vs softmax(logits[:K] / T) ${served[best]}`);
      });
      assert.ok(worst <= 1e-4, `max |probs, id_probs - python| = ${worst}`);
      // and one at a time (padding width differs): same answers
      for (let i = 0; i < parity.cases.length; i++) {
        const [o] = await det.runBatch([parity.cases[i].text]);
        for (let j = 0; j < o.probs.length; j++) assert.ok(Math.abs(o.probs[j] - parity.cases[i].probs[j]) <= 1e-4);
        for (let j = 0; j < o.idProbs.length; j++) assert.ok(Math.abs(o.idProbs[j] - parity.cases[i].id_probs[j]) <= 1e-4);
      }
    } finally {
      await det.close();
    }
  });
}

test('bundled detectors: in-distribution inputs pass, random strings are gated', async () => {
  const cases: Record<(typeof DOMAINS)[number], { id: string[]; ood: string[] }> = {
    search: {
      id: ['a domesticated carnivorous mammal that typically has a long snout', 'move fast by using one\'s feet', 'a building where travelers can pay for lodging'],
      ood: ['qzxv wkpf jjrt', 'x7#kq!!zv0 pp3@@ mf', 'zzkq vvbx'],
    },
    generation: {
      id: [
        'And the LORD spake unto Moses, saying, Speak unto the children of Israel, and say unto them',
        'Blessed are the poor in spirit: for theirs is the kingdom of heaven.',
        'The LORD is my shepherd; I shall not want. He maketh me to lie down in green pastures',
      ],
      ood: ['qzxv wkpf jjrt 8#@! lorem ipsum dolor sit amet xkcd 42', 'sudo apt-get install libssl-dev build-essential --no-install-recommends', 'asdkjh qwe zxcmnb poiuy lkjhg mnbvc'],
    },
  };
  for (const domain of DOMAINS) {
    const det = await Detector.load(dirOf(domain), { onnx: ONNX });
    try {
      for (const t of cases[domain].id) {
        const o = await det.classify(t);
        assert.ok(o.score <= det.tau, `${domain}: ID text gated (score ${o.score} > tau ${det.tau}): ${t}`);
      }
      for (const t of cases[domain].ood) {
        const o = await det.classify(t);
        assert.ok(o.score > det.tau, `${domain}: OOD text passed (score ${o.score} <= tau ${det.tau}): ${t}`);
      }
    } finally {
      await det.close();
    }
  }
});

test('concurrent classify() calls share runs; the queue is bounded', async () => {
  const det = await Detector.load(dirOf('search'), { onnx: ONNX, maxBatch: 16, maxQueue: 40 });
  try {
    const texts = Array.from({ length: 40 }, (_, i) => `a small domesticated animal number ${i}`);
    const runs0 = det.stats.runs;
    const outs = await Promise.all(texts.map((t) => det.classify(t)));
    assert.equal(outs.length, 40);
    assert.ok(det.stats.runs - runs0 <= 3, `40 concurrent inputs took ${det.stats.runs - runs0} runs (maxBatch 16)`);
    // each result belongs to its own input
    const solo = await det.runBatch([texts[7]]);
    for (let j = 0; j < solo[0].probs.length; j++) assert.ok(Math.abs(solo[0].probs[j] - outs[7].probs[j]) < 1e-5);
    const over = Array.from({ length: 41 }, (_, i) => det.classify(`x ${i}`));
    const settled = await Promise.allSettled(over);
    const rejected = settled.filter((s) => s.status === 'rejected');
    assert.equal(rejected.length, 1);
    assert.ok((rejected[0] as PromiseRejectedResult).reason instanceof ResourceExhaustedError);
  } finally {
    await det.close();
  }
  await assert.rejects(det.classify('after close'), /closed/);
});

test('a corrupted detector file is refused with a clear message', async () => {
  const tmp = mkdtempSync(join(tmpdir(), 'catskim-det-'));
  try {
    for (const f of readdirSync(dirOf('search'))) copyFileSync(join(dirOf('search'), f), join(tmp, f));
    const vocab = readFileSync(join(tmp, 'vocab.txt'), 'utf8');
    writeFileSync(join(tmp, 'vocab.txt'), vocab.replace(/\n[^\n]+\n$/, '\nzzzz\n'));
    await assert.rejects(Detector.load(tmp, { onnx: ONNX }), /vocab\.txt sha256 .* does not match the manifest/);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('latency: the detector costs well under a millisecond per input (CPU)', async () => {
  const det = await Detector.load(dirOf('generation'), { onnx: ONNX });
  try {
    const text = 'And it came to pass in those days, that there went out a decree from Caesar Augustus, that all the world should be taxed.';
    for (let i = 0; i < 50; i++) await det.runBatch([text]);
    const time = async (batch: number, reps: number) => {
      const xs: number[] = [];
      const texts = Array.from({ length: batch }, () => text);
      for (let r = 0; r < reps; r++) {
        const t0 = performance.now();
        await det.runBatch(texts);
        xs.push(performance.now() - t0);
      }
      xs.sort((a, b) => a - b);
      return xs[Math.floor(xs.length / 2)];
    };
    const b1 = await time(1, 300);
    const b32 = await time(32, 60);
    console.log(`# detector latency (tokenise + run, median): batch 1 ${b1.toFixed(3)} ms, batch 32 ${(b32 / 32).toFixed(4)} ms/input`);
    assert.ok(b1 < 5, `batch-1 call took ${b1} ms`);
    assert.ok(b32 / 32 < 0.5, `batched cost ${b32 / 32} ms per input`);
  } finally {
    await det.close();
  }
});
