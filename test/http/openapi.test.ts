/**
 * GET /openapi.json of the full server validates (@apidevtools/swagger-parser) and passes the
 * checks of Redocly's recommended rules that matter here (no network, so the rules are written out):
 * non-empty servers, a unique operationId, summary, described tag and declared security on every
 * operation, the bearer scheme on every admin route, a 2xx and (for /v1 routes) a 4xx answer.
 * Every generation route is described; Swagger UI is served at /docs from local files.
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import SwaggerParser from '@apidevtools/swagger-parser';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { operationIdFor } from '../../src/server/openapi.js';
import { testServerConfig } from '../server/helpers.js';

const METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options'];

describe('OpenAPI document and /docs', () => {
  let s: RunningServer;
  let doc: any;

  before(async () => {
    // every capability npm start serves; search without an index build (its routes exist either way)
    s = await startServer({
      config: { ...testServerConfig(), generation: { warmup: false }, search: { buildOnStart: false }, experiments: { dir: mkdtempSync(join(tmpdir(), 'catskim-openapi-')) } },
    });
    s.ready.catch(() => {}); // search cannot become ready without its index: not what this test is about
    doc = await (await fetch(`${s.httpUrl}/openapi.json`)).json();
  });
  after(async () => {
    await s?.close();
  });

  test('validates as OpenAPI (swagger-parser)', async () => {
    const copy = structuredClone(doc);
    await SwaggerParser.validate(copy);
    assert.match(doc.openapi, /^3\./);
  });

  test('every generation and OpenAI route is described', () => {
    const want = [
      'post /v1/generate',
      'post /v1/generate/stream',
      'post /v1/score',
      'post /v1/tokenize',
      'post /v1/detokenize',
      'post /v1/completions',
      'post /v1/chat/completions',
      'get /v1/models',
      'post /v1/search',
      'get /v1/admin/experiments',
    ];
    const have = new Set(Object.entries(doc.paths).flatMap(([p, ops]) => Object.keys(ops as object).map((m) => `${m} ${p}`)));
    for (const w of want) assert.ok(have.has(w), `${w} missing from /openapi.json`);
    const gen = doc.paths['/v1/generate'].post;
    const props = Object.keys(gen.requestBody.content['application/json'].schema.properties).sort();
    // the gRPC GenerateRequest's fields, all of them (proto field names)
    for (const f of ['model', 'prompt', 'max_tokens', 'chunk_size', 'temperature', 'top_k', 'top_p', 'seed', 'stop', 'n', 'logprobs', 'top_logprobs', 'return_token_ids', 'user_id', 'repetition_penalty', 'frequency_penalty', 'presence_penalty']) {
      assert.ok(props.includes(f), `GenerateRequest.${f}`);
    }
  });

  test('Redocly recommended rules: servers, operationIds, summaries, tags, security, responses', () => {
    assert.ok(Array.isArray(doc.servers) && doc.servers.length > 0, 'no-empty-servers');
    assert.ok(doc.info.license?.name, 'info-license');
    const schemes = doc.components?.securitySchemes ?? {};
    assert.deepEqual(schemes.bearerAuth, { type: 'http', scheme: 'bearer', description: schemes.bearerAuth.description });
    const tags = new Map<string, string>((doc.tags ?? []).map((t: { name: string; description: string }) => [t.name, t.description]));
    const ids = new Set<string>();
    let ops = 0;
    for (const [path, item] of Object.entries(doc.paths as Record<string, Record<string, any>>)) {
      for (const [method, op] of Object.entries(item)) {
        if (!METHODS.includes(method)) continue;
        ops++;
        const where = `${method.toUpperCase()} ${path}`;
        assert.ok(op.operationId, `operation-operationId: ${where}`);
        assert.ok(!ids.has(op.operationId), `operation-operationId-unique: ${op.operationId}`);
        ids.add(op.operationId);
        assert.ok(op.summary, `operation-summary: ${where}`);
        assert.ok(Array.isArray(op.tags) && op.tags.length > 0, `operation-tag: ${where}`);
        for (const t of op.tags) assert.ok(tags.get(t), `operation-tag-defined / tag-description: ${t} (${where})`);
        assert.ok(Array.isArray(op.security), `security-defined: ${where}`);
        for (const req of op.security) for (const name of Object.keys(req)) assert.ok(schemes[name], `security scheme ${name} (${where})`);
        if (path.startsWith('/v1/admin/')) {
          assert.deepEqual(op.security, [{ bearerAuth: [] }], `admin route without the bearer scheme: ${where}`);
          assert.ok(op.responses['401'] && op.responses['403'], `admin 401/403: ${where}`);
        }
        const codes = Object.keys(op.responses ?? {});
        assert.ok(codes.some((c) => /^2/.test(c)), `operation-2xx-response: ${where}`);
        if (path.startsWith('/v1/')) assert.ok(codes.some((c) => /^4/.test(c)), `operation-4xx-response: ${where}`);
        for (const m of path.matchAll(/\{([^}]+)\}/g)) {
          assert.ok((op.parameters ?? []).some((p: { in: string; name: string }) => p.in === 'path' && p.name === m[1]), `path-parameters-defined: ${m[1]} (${where})`);
        }
      }
    }
    assert.ok(ops >= 20, `${ops} operations`);
    assert.equal(operationIdFor('GET', '/v1/admin/experiments/:name'), 'getV1AdminExperimentsByName');
    assert.equal(operationIdFor('POST', '/v1/chat/completions'), 'postV1ChatCompletions');
  });

  test('Swagger UI at /docs, from local files', async () => {
    const page = await fetch(`${s.httpUrl}/docs/`);
    assert.equal(page.status, 200);
    const html = await page.text();
    assert.match(html, /swagger-ui/i);
    assert.doesNotMatch(html, /https?:\/\/(?!127\.0\.0\.1)[a-z]/i, 'no asset from another host');
    const js = await fetch(`${s.httpUrl}/docs/static/swagger-ui-bundle.js`);
    assert.equal(js.status, 200);
    assert.ok((await js.arrayBuffer()).byteLength > 100_000);
    const init = await (await fetch(`${s.httpUrl}/docs/static/swagger-initializer.js`)).text();
    assert.match(init, /url/);
  });
});
