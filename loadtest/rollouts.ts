/**
 * Rollouts for RL post-training, as a client would run them (issue 9): for a few KJV prompts, draw
 * n samples per prompt from a policy (model + chunk size) with Generate(n, logprobs,
 * return_token_ids), score the same token ids under a reference (another model or chunk size) with
 * Score, and print per prompt:
 *   - distinct samples out of n;
 *   - mean reward of a verifiable reward on KJV text: the prompt is a verse's preceding verse and
 *     the verse's beginning; reward 1 when the sample (up to the newline) reproduces the verse's
 *     ending exactly, else 0 (also shown: the mean fraction of the ending's bytes recalled before
 *     the first wrong byte);
 *   - the Monte Carlo estimate of the reverse KL(policy || reference) per sequence:
 *     mean over samples of sum_t [log pi(y_t) - log ref(y_t)], with log pi the log-probability under
 *     the distribution the policy actually sampled from (TokenLogprob.logprob) and log ref the
 *     reference model's raw log-probability (Score's raw_logprob), and its standard error.
 *
 *   npx tsc -p tsconfig.json && node dist/loadtest/rollouts.js \
 *     [--policy cat-kjv:16] [--reference dense-kjv:0] [--n 8] [--prompts 6] [--temperature 1] \
 *     [--max-seconds 120] [--address 127.0.0.1:PORT]
 *
 * Without --address it starts a server in this process on 127.0.0.1 (an ephemeral port); with it,
 * only a 127.0.0.1 / localhost address is accepted. Bounded: at most 16 prompts, n <= 16, and the
 * run stops starting prompts after --max-seconds (every call has a deadline).
 */
import type * as Wire from '../src/server/wire.js';
import * as grpc from '@grpc/grpc-js';
import { startServer, type RunningServer } from '../src/server/server.js';
import { loadProto } from '../src/server/grpc.js';
import { generationCapability, GENERATION_PROTO } from '../src/server/generation/capability.js';

/** (preceding verse, verse) pairs from the KJV (Genesis 1, Psalm 23, John 1; public domain). */
const VERSES: ReadonlyArray<readonly [string, string]> = [
  ['In the beginning God created the heaven and the earth.', 'And the earth was without form, and void; and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters.'],
  ['And the earth was without form, and void; and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters.', 'And God said, Let there be light: and there was light.'],
  ['And God said, Let there be light: and there was light.', 'And God saw the light, that it was good: and God divided the light from the darkness.'],
  ['And God saw the light, that it was good: and God divided the light from the darkness.', 'And God called the light Day, and the darkness he called Night. And the evening and the morning were the first day.'],
  ['And God called the light Day, and the darkness he called Night. And the evening and the morning were the first day.', 'And God said, Let there be a firmament in the midst of the waters, and let it divide the waters from the waters.'],
  ['And God said, Let us make man in our image, after our likeness: and let them have dominion over the fish of the sea, and over the fowl of the air, and over the cattle, and over all the earth, and over every creeping thing that creepeth upon the earth.', 'So God created man in his own image, in the image of God created he him; male and female created he them.'],
  ['The LORD is my shepherd; I shall not want.', 'He maketh me to lie down in green pastures: he leadeth me beside the still waters.'],
  ['He maketh me to lie down in green pastures: he leadeth me beside the still waters.', "He restoreth my soul: he leadeth me in the paths of righteousness for his name's sake."],
  ['In the beginning was the Word, and the Word was with God, and the Word was God.', 'The same was in the beginning with God.'],
  ['The same was in the beginning with God.', 'All things were made by him; and without him was not any thing made that was made.'],
  ['All things were made by him; and without him was not any thing made that was made.', 'In him was life; and the life was the light of men.'],
  ['In him was life; and the life was the light of men.', 'And the light shineth in darkness; and the darkness comprehended it not.'],
];

const args = process.argv.slice(2);
const opt = (name: string, def: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1]! : def;
};
const variant = (s: string): { model: string; chunkSize: number } => {
  const [model, c] = s.split(':');
  return { model: model!, chunkSize: Number(c ?? '0') };
};
const policy = variant(opt('policy', 'cat-kjv:16'));
const reference = variant(opt('reference', 'dense-kjv:0'));
const n = Math.min(16, Math.max(1, Number(opt('n', '8'))));
const promptCount = Math.min(VERSES.length, 16, Math.max(1, Number(opt('prompts', '6'))));
const temperature = Number(opt('temperature', '1'));
const maxSeconds = Math.min(600, Math.max(5, Number(opt('max-seconds', '120'))));
const seed = Number(opt('seed', '1'));

let server: RunningServer | null = null;
let address = opt('address', '');
if (address) {
  const host = address.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  if (!['127.0.0.1', 'localhost', '::1'].includes(host)) {
    console.error(`--address must be a loopback address (127.0.0.1:PORT), got ${address}`);
    process.exit(2);
  }
} else {
  server = await startServer({
    config: { httpPort: 0, grpcPort: 0, host: '127.0.0.1', logLevel: 'warn', onnx: { providers: ['cpu'] }, generation: { warmup: false, maxN: 16, maxRunning: 32 } },
    capabilities: [generationCapability],
  });
  await server.ready;
  address = server.grpcAddress;
}

const pkg = grpc.loadPackageDefinition(loadProto(GENERATION_PROTO)) as unknown as { catskim: { v1: { Generation: grpc.ServiceClientConstructor } } };
const client = new pkg.catskim.v1.Generation(address, grpc.credentials.createInsecure()) as grpc.Client & Record<string, (...a: unknown[]) => unknown>;

type Lp = Wire.TokenLogprob;
type Choice = Wire.Choice;

function rpc<T>(method: string, req: object, deadlineMs = 60_000): Promise<T> {
  return new Promise((resolve, reject) =>
    client[method]!(req, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (e: grpc.ServiceError | null, r: T) => (e ? reject(e) : resolve(r))),
  );
}

/** Splits a verse at a word boundary about 55% in: (beginning, ending to recall). */
function split(verse: string): [string, string] {
  let at = verse.indexOf(' ', Math.floor(verse.length * 0.55));
  if (at < 0) at = Math.floor(verse.length / 2);
  return [verse.slice(0, at + 1), verse.slice(at + 1)];
}

/** Reward 1 for the exact ending (up to the newline), and the fraction recalled before the first wrong byte. */
function reward(sample: string, ending: string): { exact: number; prefix: number } {
  const line = sample.split('\n')[0]!;
  let k = 0;
  while (k < ending.length && k < line.length && line[k] === ending[k]) k++;
  return { exact: line === ending ? 1 : 0, prefix: k / ending.length };
}

const t0 = performance.now();
console.log(`# rollouts: policy ${policy.model}:${policy.chunkSize}, reference ${reference.model}:${reference.chunkSize}, n=${n}, temperature ${temperature}, ${promptCount} prompts, server ${address}`);
console.log('prompt | distinct/n | reward exact | recalled | KL(pi||ref) per seq (nats) +- se | per token | gen ms | score ms');
let klSum = 0;
let rewardSum = 0;
let done = 0;
for (let p = 0; p < promptCount; p++) {
  if ((performance.now() - t0) / 1000 > maxSeconds) {
    console.log(`# stopped after ${maxSeconds} s`);
    break;
  }
  const [context, verse] = VERSES[p]!;
  const [begin, ending] = split(verse);
  const prompt = `${context}\n${begin}`;
  const maxTokens = Buffer.byteLength(ending) + 8;
  const g0 = performance.now();
  const gen = await rpc<{ choices: Choice[] }>('Generate', {
    model: policy.model,
    chunkSize: policy.chunkSize,
    prompt,
    maxTokens,
    temperature,
    seed: seed * 1000 + p * 16,
    n,
    stop: ['\n'],
    logprobs: true,
    returnTokenIds: true,
  });
  const genMs = performance.now() - g0;
  const choices = gen.choices.filter((c) => c.tokenIds.length > 0);
  const s0 = performance.now();
  const sc = await rpc<{ continuations: Array<{ logprobs: Lp[]; sumRawLogprob: number }> }>('Score', {
    model: reference.model,
    chunkSize: reference.chunkSize,
    prompt,
    continuations: choices.map((c) => ({ tokenIds: c.tokenIds })),
  });
  const scoreMs = performance.now() - s0;
  // per sample: sum_t [log pi(y_t) - log ref(y_t)]
  const kls = choices.map((c, i) => c.logprobs.reduce((s, x) => s + x.logprob, 0) - sc.continuations[i]!.sumRawLogprob);
  const tokens = choices.reduce((s, c) => s + c.tokenIds.length, 0);
  const mean = kls.reduce((a, b) => a + b, 0) / Math.max(1, kls.length);
  const sd = Math.sqrt(kls.reduce((a, b) => a + (b - mean) ** 2, 0) / Math.max(1, kls.length - 1));
  const rewards = gen.choices.map((c) => reward(c.text, ending));
  const exact = rewards.reduce((a, r) => a + r.exact, 0) / rewards.length;
  const recalled = rewards.reduce((a, r) => a + r.prefix, 0) / rewards.length;
  const distinct = new Set(gen.choices.map((c) => c.text)).size;
  klSum += mean;
  rewardSum += exact;
  done++;
  console.log(
    `${JSON.stringify(begin.slice(0, 28) + '...')} | ${distinct}/${n} | ${exact.toFixed(3)} | ${(100 * recalled).toFixed(1)}% | ${mean.toFixed(3)} +- ${(sd / Math.sqrt(Math.max(1, kls.length))).toFixed(3)} | ${(kls.reduce((a, b) => a + b, 0) / Math.max(1, tokens)).toFixed(4)} | ${genMs.toFixed(0)} | ${scoreMs.toFixed(0)}`,
  );
}
console.log(`# ${done} prompts in ${((performance.now() - t0) / 1000).toFixed(1)} s: mean reward ${(rewardSum / Math.max(1, done)).toFixed(3)}, mean KL(pi||ref) per sequence ${(klSum / Math.max(1, done)).toFixed(3)} nats`);
client.close();
await server?.close();
