/**
 * deploy/k8s: every overlay renders and passes the manifest checks (test/deploy/k8s-check.ts),
 * the ConfigMap's config loads through the server's own config loader, the HPA's metrics are
 * the ones prometheus-adapter's rules serve, and each check rejects a broken manifest.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import YAML from 'yaml';
import { PACKAGE_ROOT, loadConfig } from '../../src/server/config.js';
import { check, k8sDir, render, strategicMerge } from './k8s-check.js';

const K8S = k8sDir(PACKAGE_ROOT);
const OVERLAYS = ['cpu', 'cuda', 'single'];
type Obj = Record<string, any>;

const get = (objs: Obj[], kind: string, name = 'catskim') => objs.find((o) => o.kind === kind && o.metadata.name === name)!;

for (const overlay of OVERLAYS) {
  test(`overlay ${overlay}: renders and passes every check`, () => {
    const objs = render(join(K8S, 'overlays', overlay));
    assert.deepEqual(check(objs), []);
    const d = get(objs, 'Deployment');
    assert.match(d.spec.template.spec.containers[0].image, /^registry\.example\.com\/catskim:/);
  });

  test(`overlay ${overlay}: the ConfigMap's config and the pod's env load through the server's config loader`, () => {
    const objs = render(join(K8S, 'overlays', overlay));
    const cm = get(objs, 'ConfigMap', 'catskim-config');
    const secret = get(objs, 'Secret', 'catskim-secrets');
    const c = get(objs, 'Deployment').spec.template.spec.containers[0];
    const env: Record<string, string> = { ...secret.stringData };
    for (const e of c.env ?? []) if (e.value !== undefined) env[e.name] = e.value;
    env.CATSKIM_STATE_REPLICA = 'catskim-abc';
    const cfg = loadConfig({ env, overrides: YAML.parse(cm.data['config.yaml']) });
    assert.equal(cfg.httpPort, c.ports.find((p: Obj) => p.name === 'http').containerPort);
    assert.equal(cfg.grpcPort, c.ports.find((p: Obj) => p.name === 'grpc').containerPort);
    const mounts = c.volumeMounts.map((m: Obj) => m.mountPath);
    assert.ok(mounts.includes((cfg as any).search.indexDir), 'search.indexDir is mounted');
    assert.ok(mounts.some((m: string) => (cfg as any).search.cacheDir.startsWith(m)), 'search.cacheDir is on a mounted volume');
    assert.equal((cfg as any).state.url, overlay === 'single' ? '' : secret.stringData.CATSKIM_STATE_URL);
    // the preStop hook plus the server's own delay and drain fit in the grace period
    const grace = get(objs, 'Deployment').spec.template.spec.terminationGracePeriodSeconds;
    assert.ok(5 + (cfg.shutdown.preStopDelayMs + cfg.shutdown.drainTimeoutMs) / 1000 < grace);
  });
}

test('overlays differ where they should: cuda asks for a GPU, single has no HPA, no PDB and one replica', () => {
  const cuda = render(join(K8S, 'overlays', 'cuda'));
  const c = get(cuda, 'Deployment').spec.template.spec.containers[0];
  assert.equal(c.resources.limits['nvidia.com/gpu'], '1');
  assert.equal(c.env.find((e: Obj) => e.name === 'CATSKIM_ONNX_PROVIDERS').value, 'cuda,cpu');
  assert.equal(get(cuda, 'HorizontalPodAutoscaler').spec.maxReplicas, 8);
  const single = render(join(K8S, 'overlays', 'single'));
  assert.equal(get(single, 'Deployment').spec.replicas, 1);
  assert.equal(get(single, 'Deployment').spec.strategy.type, 'Recreate');
  assert.equal(get(single, 'HorizontalPodAutoscaler'), undefined);
  assert.equal(get(single, 'PodDisruptionBudget'), undefined);
  const vol = get(single, 'Deployment').spec.template.spec.volumes.find((v: Obj) => v.name === 'var');
  assert.deepEqual(vol, { name: 'var', persistentVolumeClaim: { claimName: 'catskim-var' } });
});

test("the HPA's metrics are exactly those prometheus-adapter's rules serve, from metrics the server exports", () => {
  const rules = YAML.parse(readFileSync(join(K8S, 'prometheus-adapter', 'rules.yaml'), 'utf8')).rules as Obj[];
  const served = rules.map((r) => r.name.as);
  const hpa = get(render(join(K8S, 'overlays', 'cpu')), 'HorizontalPodAutoscaler');
  assert.deepEqual(hpa.spec.metrics.map((m: Obj) => m.pods.metric.name).sort(), served.sort());
  for (const r of rules) {
    const series = /^([a-z_]+)\{/.exec(r.seriesQuery)![1];
    assert.equal(new RegExp(r.name.matches).test(series), true, `${r.name.matches} matches ${series}`);
    assert.match(r.metricsQuery, /<<\.Series>>\{<<\.LabelMatchers>>\}.*by \(<<\.GroupBy>>\)/);
    assert.deepEqual(Object.keys(r.resources.overrides).sort(), ['namespace', 'pod']);
  }
  // both series are gauges the generation service registers (src/serving/generation/metrics.ts)
  const metricsSource = readFileSync(join(PACKAGE_ROOT, 'src', 'serving', 'generation', 'metrics.ts'), 'utf8');
  for (const series of ['catskim_num_requests_waiting', 'catskim_kv_cache_usage_ratio']) {
    assert.ok(rules.some((r) => r.seriesQuery.startsWith(`${series}{`)), `a rule reads ${series}`);
    assert.ok(metricsSource.includes(`'${series}'`), `${series} is registered by the server`);
  }
});

test('strategic merge: maps merge, null deletes, named lists merge by name, $patch: delete removes', () => {
  const base = { a: { b: 1, c: 2 }, list: [{ name: 'x', v: 1 }, { name: 'y', v: 2 }] };
  assert.deepEqual(strategicMerge(base, { a: { c: null, d: 3 }, list: [{ name: 'y', v: 5 }, { name: 'z', v: 6 }, { name: 'x', $patch: 'delete' }] }), {
    a: { b: 1, d: 3 },
    list: [{ name: 'y', v: 5 }, { name: 'z', v: 6 }],
  });
});

// ------------------------------------------------------------------ negative cases

function broken(mutate: (objs: Obj[]) => void): string[] {
  const objs = render(join(K8S, 'overlays', 'cpu'));
  mutate(objs);
  return check(objs);
}

const pod = (objs: Obj[]) => get(objs, 'Deployment').spec.template.spec;

const CASES: Array<[string, (objs: Obj[]) => void, RegExp]> = [
  ['a misspelt field', (o) => (pod(o).containers[0].readinessprobe = pod(o).containers[0].readinessProbe), /containers\[0\]\.readinessprobe: unknown field/],
  ['a wrong value type', (o) => (get(o, 'Deployment').spec.replicas = '3'), /spec\.replicas: must be an integer/],
  ['a bad quantity', (o) => (pod(o).containers[0].resources.requests.memory = '2 GB'), /"2 GB" is not a Kubernetes quantity/],
  ['a wrong apiVersion', (o) => (get(o, 'HorizontalPodAutoscaler').apiVersion = 'autoscaling/v1'), /apiVersion must be autoscaling\/v2/],
  ['a selector that misses the pods', (o) => (get(o, 'Deployment').spec.selector.matchLabels['app.kubernetes.io/component'] = 'web'), /spec\.selector does not match/],
  ['a Service selecting nothing', (o) => (get(o, 'Service').spec.selector = { app: 'other' }), /Service\/catskim: selector matches no Deployment/],
  ['a Service target port that does not exist', (o) => (get(o, 'Service').spec.ports[1].targetPort = 'grcp'), /targetPort grcp is not a port/],
  ['a probe on a port that does not exist', (o) => (pod(o).containers[0].readinessProbe.httpGet.port = 'metrics'), /readinessProbe port metrics is not a container port/],
  ['no liveness probe', (o) => delete pod(o).containers[0].livenessProbe, /no livenessProbe/],
  ['a mount without a volume', (o) => (pod(o).volumes = pod(o).volumes.filter((v: Obj) => v.name !== 'tmp')), /volumeMount tmp has no volume/],
  ['a ConfigMap that is not defined', (o) => o.splice(o.indexOf(get(o, 'ConfigMap', 'catskim-config')), 1), /names ConfigMap catskim-config, which is not defined/],
  ['running as root', (o) => (pod(o).securityContext.runAsNonRoot = false), /runAsNonRoot must be true/],
  ['a writable root filesystem', (o) => (pod(o).containers[0].securityContext.readOnlyRootFilesystem = false), /readOnlyRootFilesystem must be true/],
  ['no writable volume', (o) => (pod(o).containers[0].volumeMounts = pod(o).containers[0].volumeMounts.filter((m: Obj) => m.readOnly)), /needs a writable volume/],
  ['no resource requests', (o) => delete pod(o).containers[0].resources.requests, /resources\.requests needs cpu and memory/],
  ['no preStop delay', (o) => delete pod(o).containers[0].lifecycle, /needs a preStop delay/],
  ['a rolling update that drops capacity', (o) => (get(o, 'Deployment').spec.strategy.rollingUpdate.maxUnavailable = 1), /maxUnavailable 0/],
  ['an HPA aimed at nothing', (o) => (get(o, 'HorizontalPodAutoscaler').spec.scaleTargetRef.name = 'catskim-old'), /scaleTargetRef Deployment\/catskim-old is not defined/],
  ['a PDB with both bounds', (o) => (get(o, 'PodDisruptionBudget').spec.minAvailable = 2), /exactly one of minAvailable and maxUnavailable/],
  ['a Secret with plain text in data', (o) => (get(o, 'Secret', 'catskim-secrets').data = { TOKEN: 'not base64!' }), /data\.TOKEN is not base64/],
  ['an invalid name', (o) => (get(o, 'Service').metadata.name = 'Catskim_HTTP'), /metadata\.name must be a DNS-1123 label/],
];

for (const [what, mutate, expected] of CASES) {
  test(`the check refuses ${what}`, () => {
    const errs = broken(mutate);
    assert.ok(errs.some((e) => expected.test(e)), `expected ${expected} among:\n${errs.join('\n')}`);
  });
}

test('the renderer refuses kustomize features it does not implement', () => {
  assert.throws(() => render(join(K8S, 'base', 'nope')), /no kustomization\.yaml/);
});
