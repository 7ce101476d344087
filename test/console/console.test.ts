/**
 * The web console end to end: a real server (startServer on 127.0.0.1 with the bundled CAT and
 * dense models, the SKIM and baseline encoders over the fixture labels, the OOD detector and the
 * experiments capability) and the pages in a real headless Chromium (Debian's /usr/bin/chromium
 * driven by playwright-core; never a downloaded browser).
 *
 * Every test also checks that the page logged no console error and threw nothing, and every
 * request the browser makes goes through a route that lets only 127.0.0.1 through (anything else
 * is aborted and fails the suite).
 *
 * CATSKIM_CONSOLE_SCREENSHOT=docs/console-compare.png writes the compare page's screenshot.
 */
import { after, before, beforeEach, afterEach, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { coreCapability } from '../../src/server/core.js';
import { generationCapability } from '../../src/server/generation/capability.js';
import { detectorCapability } from '../../src/server/gate/capability.js';
import { experimentsCapability } from '../../src/server/experiments/capability.js';
import { SearchCapability } from '../../src/server/search/capability.js';
import { loadWordnetLabels } from '../../src/index/wordnet.js';
import type { ConfigInput } from '../../src/server/config.js';
import { testServerConfig } from '../server/helpers.js';

// Functions passed to page.evaluate / waitForFunction run in the browser: its globals, untyped here
// (the project compiles without the DOM library).
declare const document: any;
declare const sessionStorage: any;
declare const localStorage: any;
type HTMLButtonElement = any;
type HTMLElement = any;

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const CHROMIUM = process.env.CATSKIM_CHROMIUM ?? '/usr/bin/chromium';
const TOKEN = 'console-admin-token-0123456789';
const SCREENSHOT = process.env.CATSKIM_CONSOLE_SCREENSHOT;

/** Routes the Generate and Compare pages need (the console is a client of the public HTTP API only). */
const GENERATION_ROUTES = [
  ['GET', '/v1/models'],
  ['POST', '/v1/generate/stream'],
  ['POST', '/v1/score'],
] as const;

const fixtureIds = new Set<string>((JSON.parse(readFileSync(join(ROOT, 'models/skim/export/skim/fixture.json'), 'utf8')) as { label_ids: string[] }).label_ids);
const LABELS = loadWordnetLabels().filter((l) => fixtureIds.has(l.id));

let s: RunningServer;
let browser: Browser;
let context: BrowserContext;
let page: Page;
/** Console errors and page errors of the current test. */
let problems: string[] = [];
/** Requests to anything but 127.0.0.1 (aborted). */
const leaks: string[] = [];

async function api(method: string, path: string, body?: unknown, token?: string): Promise<{ status: number; json: any }> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  const r = await fetch(`${s.httpUrl}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  return { status: r.status, json: text ? JSON.parse(text) : undefined };
}

async function open(hash: string): Promise<void> {
  await page.goto(`${s.httpUrl}/ui/#/${hash}`);
  await page.waitForSelector('#page-title');
}

before(async () => {
  // a missing browser is a failure with its fix, never a download and never a silent skip
  assert.ok(existsSync(CHROMIUM), `Debian chromium is not installed at ${CHROMIUM} (apt-get install chromium; CI: .ci/run)`);
  const dir = mkdtempSync(join(tmpdir(), 'console-e2e-'));
  const config = {
    host: '127.0.0.1',
    ...testServerConfig(),
    generation: { maxTokensLimit: 1024 },
    // the console shows the gate's verdict; flag keeps a fixture prompt from being refused
    detector: { routes: { generate: { action: 'flag' }, search: { action: 'flag' } } },
    experiments: {
      enabled: true,
      adminToken: TOKEN,
      dir: join(dir, 'experiments'),
      flushMs: 5,
      variants: { baseline: { search: { model: 'baseline' } }, skim: { search: { model: 'skim' } } },
      experiments: {
        search_encoder: { route: 'search', control: 'baseline', weights: { baseline: 50, skim: 50 }, guard: { maxP99Ms: 60000, windowSec: 60, minRequests: 1000 } },
      },
    },
  } as ConfigInput;
  s = await startServer({
    config,
    capabilities: [
      coreCapability,
      generationCapability,
      (ctx) => new SearchCapability(ctx, { cacheDir: join(dir, 'search'), M: 8, efConstruction: 32, workersPerModel: 1 }, { baseLabels: LABELS }),
      detectorCapability,
      experimentsCapability,
    ],
  });
  await s.ready;
  const missing = GENERATION_ROUTES.filter(([method, url]) => !s.http.hasRoute({ method, url })).map(([m, u]) => `${m} ${u}`);
  assert.deepEqual(missing, [], 'the console needs these routes');
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], headless: true });
});

after(async () => {
  await browser?.close();
  await s?.close();
  assert.deepEqual(leaks, [], 'requests left 127.0.0.1');
});

beforeEach(async () => {
  problems = [];
  context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  // nothing but the server under test: any other host is aborted and recorded
  await context.route('**/*', (route) => {
    const url = new URL(route.request().url());
    if (url.hostname === '127.0.0.1' && url.port === String(s.httpPort)) return route.continue();
    leaks.push(route.request().url());
    return route.abort();
  });
  page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()} (${m.location().url})`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
});

afterEach(async () => {
  await context?.close();
});

/** Asserts no console error or page error happened, but for `expected` ones (e.g. a deliberate 400). */
function assertClean(expected: RegExp[] = []): void {
  const left = problems.filter((p) => !expected.some((e) => e.test(p)));
  assert.deepEqual(left, [], 'console errors');
  assert.deepEqual(leaks, [], 'requests left 127.0.0.1');
}

describe('console', () => {
  test('/ui serves the console with a strict offline CSP; every page loads with its heading and the /docs link', async () => {
    const r = await fetch(`${s.httpUrl}/ui`, { redirect: 'manual' });
    assert.equal(r.status, 302);
    assert.equal(r.headers.get('location'), '/ui/');
    const index = await fetch(`${s.httpUrl}/ui/`);
    assert.equal(index.status, 200);
    assert.match(index.headers.get('content-type') ?? '', /text\/html/);
    assert.match(index.headers.get('content-security-policy') ?? '', /default-src 'none'.*connect-src 'self'/);
    const js = await fetch(`${s.httpUrl}/ui/app.js`);
    assert.match(js.headers.get('content-type') ?? '', /javascript/);
    const missing = await api('GET', '/ui/no-such-file.js');
    assert.equal(missing.status, 404);
    assert.equal(missing.json.error.code, 'NOT_FOUND');
    const escape = await fetch(`${s.httpUrl}/ui/..%2fpackage.json`);
    assert.notEqual(escape.status, 200);

    for (const [hash, title] of [
      ['generate', 'Generate'],
      ['compare', 'Compare chunk sizes'],
      ['search', 'Search'],
      ['experiments', 'Experiments'],
      ['server', 'Server'],
    ]) {
      await open(hash);
      assert.equal(await page.textContent('#page-title'), title);
      assert.equal(await page.getAttribute(`nav a[data-page="${hash}"]`, 'aria-current'), 'page');
      assert.equal(await page.title(), `${title} · catskim console`);
    }
    assert.equal(await page.getAttribute('nav a.ext', 'href'), '/docs');
    assert.equal((await fetch(`${s.httpUrl}/docs`)).status, 200, 'the /docs link leads somewhere');
    await page.waitForSelector('#health.ready');
    await open('nowhere');
    assert.equal(await page.textContent('#page-title'), 'Not found');
    assertClean();
  });

  test('Generate streams text with chunk boundaries, live TTFT, tokens/s and the exact peak KV bytes', async (t) => {
    await open('generate');
    await page.waitForSelector('#gen-model option[value="cat-kjv"]', { state: 'attached' });
    await page.selectOption('#gen-model', 'cat-kjv');
    await page.selectOption('#gen-chunk', '4');
    await page.fill('#gen-max-tokens', '300');
    await page.click('#gen-form summary'); // the sampling knobs
    await page.fill('#gen-temperature', '0');
    // record what the output shows at every change, and whether the request was still running
    await page.evaluate(() => {
      const w = globalThis as any;
      w.seen = [];
      new (w.MutationObserver)(() => {
        const gen = [...document.querySelectorAll('#gen-output .gen')].map((e: any) => e.textContent).join('');
        w.seen.push({ length: gen.length, running: !(document.querySelector('#gen-stop') as HTMLButtonElement).disabled });
      }).observe(document.querySelector('#gen-output'), { childList: true, subtree: true, characterData: true });
    });
    // keyboard: Ctrl+Enter in the prompt submits
    await page.focus('#gen-prompt');
    await page.keyboard.press('Control+Enter');
    await page.waitForFunction(() => /^done/.test(document.querySelector('#gen-form .status')?.textContent ?? ''), undefined, { timeout: 120_000 });
    // text appeared while the request was still running, in more than one step
    const seen = (await page.evaluate(() => (globalThis as any).seen)) as Array<{ length: number; running: boolean }>;
    const streamed = new Set(seen.filter((x) => x.running && x.length > 0).map((x) => x.length));
    assert.ok(streamed.size >= 2, `text grew while streaming: ${JSON.stringify(seen.slice(0, 20))}`);
    const shown = await page.$$eval('#gen-output .gen', (els) => els.map((e) => e.textContent).join(''));
    const prompt = await page.inputValue('#gen-prompt');
    // the same greedy request without streaming gives the same text
    const direct = await api('POST', '/v1/generate', { model: 'cat-kjv', prompt, max_tokens: 300, chunk_size: 4, temperature: 0 });
    assert.equal(direct.status, 200);
    assert.equal(shown, direct.json.text);
    // chunk boundaries: every drawn chunk holds at most C=4 bytes, starting at multiples of 4
    const spans = await page.$$eval('#gen-output .ck', (els) => els.map((e) => ({ text: e.textContent ?? '', title: e.getAttribute('title') ?? '' })));
    const total = Buffer.byteLength(prompt) + Buffer.byteLength(shown);
    const chunks = new Set(spans.map((x) => x.title));
    assert.equal(chunks.size, Math.ceil(total / 4));
    for (const x of spans) assert.ok(Buffer.byteLength(x.text) <= 4 + 3, `a chunk span holds ${JSON.stringify(x.text)}`);
    assert.ok((await page.$$('#gen-output .boundary')).length >= chunks.size - 1);
    const numbers = await page.textContent('#gen-numbers');
    assert.match(numbers ?? '', /TTFT\s*[\d.]+ (ms|s)/);
    assert.match(numbers ?? '', /tokens\/s\s*[\d.]+/);
    assert.match(numbers ?? '', /peak KV cache\s*[\d.]+ (B|KiB|MiB)/);
    assert.match(numbers ?? '', new RegExp(`tokens\\s*${Buffer.byteLength(shown)}`));
    assert.match((await page.textContent('#gen-meta')) ?? '', /chunk sizeC=4/);

    // no model named: the server's A/B experiment on generate (if any) picks the variant, shown
    const exps = (await api('GET', '/v1/admin/experiments', undefined, TOKEN)).json.experiments as Array<{ route: string; active: boolean; weights: Record<string, number> }>;
    const gen = exps.find((e) => e.route === 'generate' && e.active);
    if (gen) {
      await page.selectOption('#gen-model', '');
      await page.fill('#gen-max-tokens', '16');
      await page.click('#gen-run');
      await page.waitForFunction(() => /^done/.test(document.querySelector('#gen-form .status')?.textContent ?? ''), undefined, { timeout: 60_000 });
      const meta = Object.fromEntries(await page.$$eval('#gen-meta > div', (els) => els.map((e: any) => [e.querySelector('dt')?.textContent, e.querySelector('dd')?.textContent])));
      const variant = meta.variant;
      assert.ok(variant && variant in gen.weights, `variant ${variant} of ${JSON.stringify(gen.weights)}`);
    }
    assertClean();
  });

  test('Generate: a server error shows its message and field, not a blank page', async (t) => {
    await open('generate');
    await page.waitForSelector('#gen-model option[value="cat-kjv"]', { state: 'attached' });
    // longer than the model's context: only the server can tell
    await page.fill('#gen-prompt', 'And God said, Let there be light. '.repeat(130));
    await page.click('#gen-run');
    const err = await page.waitForSelector('#gen-output .error');
    const text = (await err.textContent()) ?? '';
    assert.match(text, /body\.prompt/);
    assert.match(text, /HTTP 400 INVALID_ARGUMENT/);
    assertClean([/Failed to load resource: the server responded with a status of 400/]);
  });

  test('Compare fills in every chunk size and dense with text, KV bytes, tokens/s and bits/byte, and draws the chart', async (t) => {
    const models = (await api('GET', '/v1/models')).json.data as Array<{ id: string; kind: string; chunk_sizes: number[] }>;
    const cat = models.find((m) => m.id === 'cat-kjv')!;
    await open('compare');
    await page.waitForSelector('#cmp-cat-model option[value="cat-kjv"]', { state: 'attached' });
    await page.selectOption('#cmp-cat-model', 'cat-kjv');
    await page.selectOption('#cmp-dense-model', 'dense-kjv');
    await page.fill('#cmp-max-tokens', '48');
    await page.click('#cmp-run');
    const labels = [...cat.chunk_sizes.map((c) => `C=${c}`), 'dense'];
    await page.waitForFunction((n) => document.querySelectorAll('#cmp-cards .card[data-state="done"]').length === n, labels.length, { timeout: 180_000 });
    const cards = await page.$$eval('#cmp-cards .card', (els) =>
      els.map((e) => ({ label: (e as HTMLElement).dataset.variant, text: e.querySelector('.output')?.textContent ?? '', numbers: e.querySelector('.numbers')?.textContent ?? '' })),
    );
    assert.deepEqual(cards.map((c) => c.label), labels);
    const kib = (s: string) => {
      const m = /peak KV\s*([\d.]+) (B|KiB|MiB)/.exec(s);
      assert.ok(m, s);
      return Number(m[1]) * (m[2] === 'MiB' ? 1024 * 1024 : m[2] === 'KiB' ? 1024 : 1);
    };
    for (const c of cards) {
      assert.ok(c.text.length > 0, `${c.label} has text`);
      assert.match(c.numbers, /bits\/byte\s*\d+\.\d{3}/, c.label);
      assert.match(c.numbers, /tokens\/s\s*[\d.]+/, c.label);
    }
    const dense = kib(cards.at(-1)!.numbers);
    for (const c of cards.slice(0, -1)) assert.ok(kib(c.numbers) < dense, `${c.label} holds less KV than dense`);
    assert.equal(await page.locator('#cmp-chart svg .point').count(), labels.length);
    assert.match((await page.textContent('#cmp-status')) ?? '', new RegExp(`done: ${labels.length} of ${labels.length}`));
    if (SCREENSHOT) {
      await page.setViewportSize({ width: 1200, height: 900 });
      await page.screenshot({ path: SCREENSHOT, fullPage: true, type: 'png' });
      assert.ok(existsSync(SCREENSHOT) && statSync(SCREENSHOT).size < 300 * 1024, 'screenshot under 300 KB');
    }
    assertClean();
  });

  test('Search shows results with words, definition, score, latency, the OOD verdict and the variant, in every mode; a click is recorded', async (t) => {
    await open('search');
    await page.fill('#search-query', 'dog');
    await page.fill('#search-k', '5');
    await page.keyboard.press('Enter');
    await page.waitForSelector('#search-results table.results tbody tr');
    assert.equal(await page.locator('#search-results tbody tr').count(), 5);
    const meta = (await page.textContent('#search-meta')) ?? '';
    assert.match(meta, /latency[\d.]+ ms round trip/);
    assert.match(meta, /variant(baseline|skim)/);
    assert.match(meta, /OOD gate(in|out of) distribution · score [\d.]+/);
    const first = (await page.textContent('#search-results tbody tr:first-child')) ?? '';
    assert.match(first, /\d{8}-[nvasr]/);
    assert.match(first, /\d\.\d{3}/);
    await page.click('#search-results tbody tr:first-child button');
    await page.waitForFunction(() => document.querySelector('#search-results tbody tr:first-child button')?.textContent === 'Recorded');
    // each mode shows its results with their words
    for (const mode of ['dense', 'sparse', 'hybrid']) {
      await page.selectOption('#search-mode', mode);
      await page.click('#search-run');
      await page.waitForFunction((m) => new RegExp(`search${m}`).test(document.querySelector('#search-meta')?.textContent ?? ''), mode);
      assert.ok((await page.locator('#search-results tbody tr').count()) > 0, mode);
      assert.ok((await page.locator('#search-results tbody tr:first-child .chip').count()) > 0, `${mode}: words shown`);
    }
    assertClean();
  });

  test('Search: a bad filter shows the server message naming the field', async () => {
    await open('search');
    await page.fill('#search-query', 'dog');
    await page.click('#search-form summary');
    await page.fill('#search-lexfile', 'noun.nothing');
    await page.click('#search-run');
    const err = (await (await page.waitForSelector('#search-results .error')).textContent()) ?? '';
    assert.match(err, /body\.filter\.lexfile/);
    assertClean([/Failed to load resource: the server responded with a status of 400/]);
  });

  test('Experiments: the token unlocks the page (session storage, never the URL); a weight change and a rollback are applied', async () => {
    // traffic with a click, so the report has a CTR
    for (let i = 0; i < 6; i++) {
      const r = await fetch(`${s.httpUrl}/v1/search`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-user-id': `u${i}` }, body: JSON.stringify({ query: 'cat' }) });
      const j = (await r.json()) as { request_id: string; results: Array<{ id: string }> };
      if (i < 3) assert.equal((await api('POST', '/v1/feedback', { request_id: j.request_id, result_id: j.results[0].id })).status, 202);
    }
    await open('experiments');
    assert.match((await page.textContent('#exp-list')) ?? '', /Enter the admin token/);
    // a wrong token: the server's message
    await page.fill('#exp-token', 'wrong-token-wrong-token');
    await page.click('#exp-use-token');
    assert.match((await (await page.waitForSelector('#exp-list .error')).textContent()) ?? '', /token was refused.*invalid bearer token.*HTTP 401/s);
    await page.fill('#exp-token', TOKEN);
    await page.keyboard.press('Enter');
    const card = await page.waitForSelector('article.experiment[data-experiment="search_encoder"]');
    await page.waitForFunction(() => /95% CI/.test(document.querySelector('article.experiment')?.textContent ?? ''));
    const text = (await card.textContent()) ?? '';
    assert.match(text, /baseline.*control/s);
    assert.match(text, /\d+\.\d%95% CI \d+\.\d%–\d+\.\d%/);
    assert.ok(!page.url().includes(TOKEN), 'the token is not in the URL');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('catskim.adminToken')), TOKEN);
    assert.equal(await page.evaluate(() => Object.keys(localStorage).length), 0);

    // the slider, by keyboard: skim's weight 50 -> 60
    await page.focus('tr[data-variant="skim"] .weight-slider');
    for (let i = 0; i < 10; i++) await page.keyboard.press('ArrowRight');
    assert.equal(await page.inputValue('tr[data-variant="skim"] .weight-number'), '60');
    await page.click('article.experiment .actions button.primary');
    await page.waitForFunction(() => /applied: baseline 50, skim 60/.test(document.querySelector('article.experiment .actions')?.textContent ?? ''));
    assert.deepEqual((await api('GET', '/v1/admin/experiments/search_encoder', undefined, TOKEN)).json.weights, { baseline: 50, skim: 60 });

    // rollback: two steps
    await page.click('button[data-rollback="skim"]');
    assert.equal(await page.textContent('button[data-rollback="skim"]'), 'Confirm: weight 0');
    await page.click('button[data-rollback="skim"]');
    await page.waitForFunction(() => /rolled back/.test(document.querySelector('article.experiment .actions')?.textContent ?? ''));
    assert.deepEqual((await api('GET', '/v1/admin/experiments/search_encoder', undefined, TOKEN)).json.weights, { baseline: 50, skim: 0 });
    assert.equal(await page.textContent('button[data-rollback="skim"]'), 'Rolled back');

    // the report route itself (read-only, behind the token)
    const rep = await api('GET', '/v1/admin/experiments/search_encoder/report', undefined, TOKEN);
    assert.equal(rep.status, 200);
    const served = rep.json.report.variants.reduce((n: number, v: { served: number }) => n + v.served, 0);
    const clicked = rep.json.report.variants.reduce((n: number, v: { clicked: number }) => n + v.clicked, 0);
    assert.ok(served >= 6 && clicked >= 3, JSON.stringify(rep.json.report.variants));
    assert.equal(rep.json.guard.limits.maxP99Ms, 60000);
    assert.equal((await api('GET', '/v1/admin/experiments/search_encoder/report')).status, 401);
    assert.equal((await api('GET', '/v1/admin/experiments/nope/report', undefined, TOKEN)).status, 404);
    await api('PATCH', '/v1/admin/experiments/search_encoder', { weights: { skim: 50 } }, TOKEN);
    assertClean([/Failed to load resource: the server responded with a status of 401/]);
  });

  test('Server shows readiness, sessions with their provider, per-model queue and KV, search indexes and the KV history', async () => {
    const st = await api('GET', '/v1/status');
    assert.equal(st.status, 200);
    assert.equal(st.json.status, 'ready');
    assert.ok(st.json.sessions.length > 0 && st.json.sessions.every((x: { provider: string }) => x.provider === 'cpu'));
    assert.deepEqual(st.json.generation.models.map((m: { model: string }) => m.model), ['cat-kjv', 'dense-kjv']);
    for (const m of st.json.generation.models) {
      assert.equal(m.running, 0);
      assert.equal(m.waiting, 0);
      assert.ok(m.kv_usage_ratio >= 0 && m.kv_usage_ratio <= 1);
    }
    assert.deepEqual(st.json.search.models.map((m: { model: string; index_labels: number }) => [m.model, m.index_labels]), [['baseline', LABELS.length], ['skim', LABELS.length]]);
    assert.ok(st.json.history.samples.length >= 1);
    await open('server');
    await page.waitForSelector('#server-readiness');
    assert.match((await page.textContent('#server-readiness')) ?? '', /ready/);
    assert.match((await page.textContent('#server-sessions')) ?? '', /cpu/);
    const gen = (await page.textContent('#server-generation')) ?? '';
    assert.match(gen, /cat-kjv/);
    assert.match(gen, /dense-kjv/);
    assert.match((await page.textContent('#server-search')) ?? '', new RegExp(`skim${LABELS.length.toLocaleString('en-US')}`));
    assert.equal(await page.locator('#server-status svg.chart').count(), 1);
    assertClean();
  });

  test('narrow window (360 px): no page scrolls sideways; the keyboard reaches the navigation', async () => {
    await page.setViewportSize({ width: 360, height: 740 });
    for (const hash of ['generate', 'compare', 'search', 'experiments', 'server']) {
      await open(hash);
      await page.waitForTimeout(300);
      const wide = await page.evaluate(() => document.documentElement.scrollWidth);
      assert.ok(wide <= 360, `${hash} is ${wide} px wide`);
    }
    await page.goto('about:blank');
    await open('generate');
    await page.keyboard.press('Tab'); // skip link
    assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'Skip to content');
    await page.keyboard.press('Tab');
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'Generate');
    await page.keyboard.press('Tab');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.querySelector('#page-title')?.textContent === 'Compare chunk sizes');
    assertClean();
  });
});
