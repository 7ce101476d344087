/**
 * Renders our kustomize overlays and checks the objects, without kubectl or kustomize (neither
 * is installable here).
 *
 * render(): the kustomize features deploy/k8s uses, and only those: `resources` (files and
 * directories with a kustomization.yaml), `labels` (with includeSelectors), `images`, and
 * `patches` (strategic merge: maps merge, null deletes a key, lists of named objects merge by
 * name, `$patch: delete` removes an object; `path` or inline `patch`, with an optional target).
 * Anything else in a kustomization.yaml is refused, so the renderer cannot silently drift from
 * what kustomize would do.
 *
 * check(): each object against the shape of its Kubernetes kind (the fields of the API's
 * OpenAPI schema that these kinds can carry, unknown fields refused, value types and quantity
 * syntax checked), then the cross-object rules a cluster would only reveal at run time:
 * selectors match pod labels, probes and Service target ports name real container ports, every
 * mounted volume and referenced ConfigMap/Secret/PVC exists, the pod runs as non-root with a
 * read-only root filesystem and a writable volume, containers have resource requests, the HPA
 * targets the Deployment.
 */
import { readFileSync, existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import YAML from 'yaml';

type Obj = Record<string, any>;

// ------------------------------------------------------------------ rendering

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Strategic merge of `patch` into `base` (new object). */
export function strategicMerge(base: unknown, patch: unknown): unknown {
  if (!isObj(patch) || !isObj(base)) return patch;
  const out: Obj = { ...base };
  for (const [k, v] of Object.entries(patch)) {
    if (k === '$patch') continue;
    if (v === null) delete out[k];
    else if (Array.isArray(v) && Array.isArray(out[k]) && v.every((x) => isObj(x) && typeof x.name === 'string') && out[k].every((x: unknown) => isObj(x) && typeof (x as Obj).name === 'string')) {
      const merged: Obj[] = out[k].map((x: Obj) => ({ ...x }));
      for (const item of v as Obj[]) {
        const i = merged.findIndex((x) => x.name === item.name);
        if (item.$patch === 'delete') {
          if (i >= 0) merged.splice(i, 1);
        } else if (i >= 0) merged[i] = strategicMerge(merged[i], item) as Obj;
        else merged.push(item);
      }
      out[k] = merged;
    } else out[k] = strategicMerge(out[k], v);
  }
  return out;
}

const KUSTOMIZATION_KEYS = new Set(['apiVersion', 'kind', 'resources', 'labels', 'images', 'patches']);

function loadYamlDocs(path: string): Obj[] {
  return YAML.parseAllDocuments(readFileSync(path, 'utf8'))
    .map((d) => {
      if (d.errors.length) throw new Error(`${path}: ${d.errors[0].message}`);
      return d.toJS() as Obj;
    })
    .filter((d) => d !== null);
}

/** Render a kustomization directory into its objects. */
export function render(dir: string): Obj[] {
  const kpath = join(dir, 'kustomization.yaml');
  if (!existsSync(kpath)) throw new Error(`${dir}: no kustomization.yaml`);
  const k = loadYamlDocs(kpath)[0];
  for (const key of Object.keys(k)) if (!KUSTOMIZATION_KEYS.has(key)) throw new Error(`${kpath}: "${key}" is not supported by this renderer`);
  if (k.apiVersion !== 'kustomize.config.k8s.io/v1beta1' || k.kind !== 'Kustomization') throw new Error(`${kpath}: not a kustomize.config.k8s.io/v1beta1 Kustomization`);
  let objs: Obj[] = [];
  for (const r of (k.resources ?? []) as string[]) {
    const p = join(dir, r);
    if (!existsSync(p)) throw new Error(`${kpath}: resource ${r} does not exist`);
    objs.push(...(statSync(p).isDirectory() ? render(p) : loadYamlDocs(p)));
  }
  for (const l of (k.labels ?? []) as Obj[]) {
    for (const o of objs) {
      o.metadata = { ...o.metadata, labels: { ...o.metadata?.labels, ...l.pairs } };
      if (!l.includeSelectors) continue;
      const addTo = (path: string[]) => {
        let cur: Obj | undefined = o;
        for (const p of path.slice(0, -1)) cur = cur?.[p];
        const last = path[path.length - 1];
        if (cur && isObj(cur[last])) cur[last] = { ...cur[last], ...l.pairs };
      };
      if (o.kind === 'Deployment') {
        addTo(['spec', 'selector', 'matchLabels']);
        addTo(['spec', 'template', 'metadata', 'labels']);
      } else if (o.kind === 'Service') addTo(['spec', 'selector']);
      else if (o.kind === 'PodDisruptionBudget') addTo(['spec', 'selector', 'matchLabels']);
      else if (o.kind === 'Job') {
        o.spec.template.metadata = { ...o.spec.template.metadata, labels: { ...o.spec.template.metadata?.labels, ...l.pairs } };
      }
    }
  }
  for (const img of (k.images ?? []) as Obj[]) {
    for (const o of objs) {
      for (const c of o.spec?.template?.spec?.containers ?? []) {
        if (c.image === img.name || c.image?.startsWith(`${img.name}:`)) c.image = `${img.newName ?? img.name}${img.newTag ? `:${img.newTag}` : ''}`;
      }
    }
  }
  for (const p of (k.patches ?? []) as Obj[]) {
    const docs = p.path ? loadYamlDocs(join(dir, p.path)) : YAML.parseAllDocuments(p.patch).map((d) => d.toJS() as Obj);
    for (const patch of docs) {
      const kind = p.target?.kind ?? patch.kind;
      const name = p.target?.name ?? patch.metadata?.name;
      const i = objs.findIndex((o) => o.kind === kind && o.metadata?.name === name);
      if (i < 0) throw new Error(`${kpath}: patch target ${kind}/${name} not found`);
      if (patch.$patch === 'delete') objs = objs.filter((_, j) => j !== i);
      else objs[i] = strategicMerge(objs[i], patch) as Obj;
    }
  }
  return objs;
}

// ------------------------------------------------------------------ shapes

/** A field type: a primitive name, a nested shape, a list of one, or a map of one ({'*': T}). */
type T = 'string' | 'int' | 'bool' | 'quantity' | 'intOrString' | 'any' | Shape | [T] | { '*': T };
interface Shape {
  [field: string]: T;
}

const META: Shape = { name: 'string', namespace: 'string', labels: { '*': 'string' }, annotations: { '*': 'string' } };
const LABEL_SELECTOR: Shape = { matchLabels: { '*': 'string' }, matchExpressions: [{ key: 'string', operator: 'string', values: ['string'] }] };
const RESOURCES: Shape = { requests: { '*': 'quantity' }, limits: { '*': 'quantity' } };
const ACTION: Shape = {
  exec: { command: ['string'] },
  httpGet: { path: 'string', port: 'intOrString', scheme: 'string', host: 'string', httpHeaders: [{ name: 'string', value: 'string' }] },
  tcpSocket: { port: 'intOrString', host: 'string' },
  sleep: { seconds: 'int' },
};
const PROBE: Shape = {
  exec: { command: ['string'] },
  httpGet: ACTION.httpGet,
  tcpSocket: ACTION.tcpSocket,
  grpc: { port: 'int', service: 'string' },
  initialDelaySeconds: 'int',
  periodSeconds: 'int',
  timeoutSeconds: 'int',
  failureThreshold: 'int',
  successThreshold: 'int',
  terminationGracePeriodSeconds: 'int',
};
const CONTAINER: Shape = {
  name: 'string',
  image: 'string',
  imagePullPolicy: 'string',
  command: ['string'],
  args: ['string'],
  workingDir: 'string',
  ports: [{ name: 'string', containerPort: 'int', protocol: 'string' }],
  env: [{ name: 'string', value: 'string', valueFrom: { fieldRef: { fieldPath: 'string', apiVersion: 'string' }, secretKeyRef: { name: 'string', key: 'string', optional: 'bool' }, configMapKeyRef: { name: 'string', key: 'string', optional: 'bool' }, resourceFieldRef: { resource: 'string', containerName: 'string', divisor: 'quantity' } } }],
  envFrom: [{ prefix: 'string', secretRef: { name: 'string', optional: 'bool' }, configMapRef: { name: 'string', optional: 'bool' } }],
  resources: RESOURCES,
  volumeMounts: [{ name: 'string', mountPath: 'string', readOnly: 'bool', subPath: 'string' }],
  livenessProbe: PROBE,
  readinessProbe: PROBE,
  startupProbe: PROBE,
  lifecycle: { preStop: ACTION, postStart: ACTION },
  securityContext: {
    allowPrivilegeEscalation: 'bool',
    readOnlyRootFilesystem: 'bool',
    runAsNonRoot: 'bool',
    runAsUser: 'int',
    runAsGroup: 'int',
    privileged: 'bool',
    capabilities: { drop: ['string'], add: ['string'] },
    seccompProfile: { type: 'string' },
  },
  terminationMessagePolicy: 'string',
};
const VOLUME: Shape = {
  name: 'string',
  emptyDir: { medium: 'string', sizeLimit: 'quantity' },
  configMap: { name: 'string', optional: 'bool', defaultMode: 'int', items: [{ key: 'string', path: 'string' }] },
  secret: { secretName: 'string', optional: 'bool', defaultMode: 'int' },
  persistentVolumeClaim: { claimName: 'string', readOnly: 'bool' },
};
const POD_SPEC: Shape = {
  containers: [CONTAINER],
  initContainers: [CONTAINER],
  volumes: [VOLUME],
  restartPolicy: 'string',
  terminationGracePeriodSeconds: 'int',
  serviceAccountName: 'string',
  automountServiceAccountToken: 'bool',
  nodeSelector: { '*': 'string' },
  tolerations: [{ key: 'string', operator: 'string', value: 'string', effect: 'string', tolerationSeconds: 'int' }],
  affinity: 'any',
  topologySpreadConstraints: [{ maxSkew: 'int', topologyKey: 'string', whenUnsatisfiable: 'string', labelSelector: LABEL_SELECTOR }],
  securityContext: { runAsNonRoot: 'bool', runAsUser: 'int', runAsGroup: 'int', fsGroup: 'int', seccompProfile: { type: 'string' } },
  priorityClassName: 'string',
};
const TEMPLATE: Shape = { metadata: META, spec: POD_SPEC };

const KINDS: Record<string, { apiVersion: string; shape: Shape }> = {
  ConfigMap: { apiVersion: 'v1', shape: { data: { '*': 'string' } } },
  Secret: { apiVersion: 'v1', shape: { type: 'string', data: { '*': 'string' }, stringData: { '*': 'string' } } },
  PersistentVolumeClaim: {
    apiVersion: 'v1',
    shape: { spec: { accessModes: ['string'], storageClassName: 'string', volumeMode: 'string', resources: RESOURCES } },
  },
  Service: {
    apiVersion: 'v1',
    shape: {
      spec: {
        type: 'string',
        selector: { '*': 'string' },
        ports: [{ name: 'string', port: 'int', targetPort: 'intOrString', protocol: 'string', appProtocol: 'string', nodePort: 'int' }],
        clusterIP: 'string',
        sessionAffinity: 'string',
      },
    },
  },
  Deployment: {
    apiVersion: 'apps/v1',
    shape: {
      spec: {
        replicas: 'int',
        revisionHistoryLimit: 'int',
        minReadySeconds: 'int',
        progressDeadlineSeconds: 'int',
        selector: LABEL_SELECTOR,
        strategy: { type: 'string', rollingUpdate: { maxUnavailable: 'intOrString', maxSurge: 'intOrString' } },
        template: TEMPLATE,
      },
    },
  },
  Job: {
    apiVersion: 'batch/v1',
    shape: { spec: { backoffLimit: 'int', ttlSecondsAfterFinished: 'int', activeDeadlineSeconds: 'int', completions: 'int', parallelism: 'int', template: TEMPLATE } },
  },
  PodDisruptionBudget: { apiVersion: 'policy/v1', shape: { spec: { minAvailable: 'intOrString', maxUnavailable: 'intOrString', selector: LABEL_SELECTOR } } },
  HorizontalPodAutoscaler: {
    apiVersion: 'autoscaling/v2',
    shape: {
      spec: {
        scaleTargetRef: { apiVersion: 'string', kind: 'string', name: 'string' },
        minReplicas: 'int',
        maxReplicas: 'int',
        metrics: [
          {
            type: 'string',
            pods: { metric: { name: 'string', selector: LABEL_SELECTOR }, target: { type: 'string', averageValue: 'quantity', value: 'quantity', averageUtilization: 'int' } },
            resource: { name: 'string', target: { type: 'string', averageValue: 'quantity', value: 'quantity', averageUtilization: 'int' } },
            external: 'any',
            object: 'any',
          },
        ],
        behavior: {
          scaleUp: { stabilizationWindowSeconds: 'int', selectPolicy: 'string', policies: [{ type: 'string', value: 'int', periodSeconds: 'int' }] },
          scaleDown: { stabilizationWindowSeconds: 'int', selectPolicy: 'string', policies: [{ type: 'string', value: 'int', periodSeconds: 'int' }] },
        },
      },
    },
  },
};

// the Kubernetes quantity grammar (resource.Quantity): a decimal number with an optional suffix
const QUANTITY = /^[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?\d+)?$/;
const DNS1123 = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const ENV_NAME = /^[-._a-zA-Z][-._a-zA-Z0-9]*$/;

function checkShape(v: unknown, t: T, path: string, errs: string[]): void {
  if (t === 'any') return;
  if (t === 'string') {
    if (typeof v !== 'string') errs.push(`${path}: must be a string, got ${JSON.stringify(v)}`);
  } else if (t === 'int') {
    if (!Number.isInteger(v)) errs.push(`${path}: must be an integer, got ${JSON.stringify(v)}`);
  } else if (t === 'bool') {
    if (typeof v !== 'boolean') errs.push(`${path}: must be a boolean, got ${JSON.stringify(v)}`);
  } else if (t === 'intOrString') {
    if (!Number.isInteger(v) && typeof v !== 'string') errs.push(`${path}: must be an integer or a string`);
  } else if (t === 'quantity') {
    if (!(Number.isFinite(v) || (typeof v === 'string' && QUANTITY.test(v)))) errs.push(`${path}: ${JSON.stringify(v)} is not a Kubernetes quantity`);
  } else if (Array.isArray(t)) {
    if (!Array.isArray(v)) errs.push(`${path}: must be a list`);
    else v.forEach((x, i) => checkShape(x, t[0], `${path}[${i}]`, errs));
  } else if ('*' in t && Object.keys(t).length === 1) {
    if (!isObj(v)) errs.push(`${path}: must be a map`);
    else for (const [k, x] of Object.entries(v)) checkShape(x, (t as { '*': T })['*'], `${path}.${k}`, errs);
  } else {
    if (!isObj(v)) {
      errs.push(`${path}: must be an object`);
      return;
    }
    for (const [k, x] of Object.entries(v)) {
      const ft = (t as Shape)[k];
      if (ft === undefined) errs.push(`${path}.${k}: unknown field`);
      else checkShape(x, ft, `${path}.${k}`, errs);
    }
  }
}

function matches(selector: Obj | undefined, labels: Obj | undefined): boolean {
  if (!selector || Object.keys(selector).length === 0) return false;
  return Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

function checkPod(o: Obj, path: string, objs: Obj[], errs: string[], opts: { requireProbes: boolean }): void {
  const spec = o.spec?.template?.spec as Obj | undefined;
  if (!spec) return;
  const find = (kind: string, name: string) => objs.some((x) => x.kind === kind && x.metadata?.name === name);
  const volumes = new Map<string, Obj>((spec.volumes ?? []).map((v: Obj) => [v.name, v]));
  for (const [name, v] of volumes) {
    const sources = ['emptyDir', 'configMap', 'secret', 'persistentVolumeClaim'].filter((s) => v[s] !== undefined);
    if (sources.length !== 1) errs.push(`${path}: volume ${name} must have exactly one source, has ${sources.join(', ') || 'none'}`);
    if (v.configMap && !find('ConfigMap', v.configMap.name)) errs.push(`${path}: volume ${name} names ConfigMap ${v.configMap.name}, which is not defined`);
    if (v.secret && !find('Secret', v.secret.secretName)) errs.push(`${path}: volume ${name} names Secret ${v.secret.secretName}, which is not defined`);
    if (v.persistentVolumeClaim && !find('PersistentVolumeClaim', v.persistentVolumeClaim.claimName)) errs.push(`${path}: volume ${name} names PVC ${v.persistentVolumeClaim.claimName}, which is not defined`);
  }
  if (spec.securityContext?.runAsNonRoot !== true) errs.push(`${path}: pod securityContext.runAsNonRoot must be true`);
  if (!(spec.securityContext?.runAsUser > 0)) errs.push(`${path}: pod securityContext.runAsUser must be a non-zero uid`);
  for (const c of spec.containers ?? []) {
    const cp = `${path} container ${c.name}`;
    if (!c.image) errs.push(`${cp}: no image`);
    const ports = new Map<string, number>((c.ports ?? []).map((p: Obj) => [p.name, p.containerPort]));
    const portOk = (p: unknown) => (typeof p === 'number' ? [...ports.values()].includes(p) : ports.has(p as string));
    for (const probe of ['livenessProbe', 'readinessProbe', 'startupProbe']) {
      const pr = c[probe] as Obj | undefined;
      if (!pr) {
        if (opts.requireProbes && probe !== 'startupProbe') errs.push(`${cp}: no ${probe}`);
        continue;
      }
      const handlers = ['exec', 'httpGet', 'tcpSocket', 'grpc'].filter((h) => pr[h] !== undefined);
      if (handlers.length !== 1) errs.push(`${cp}: ${probe} needs exactly one handler`);
      const port = pr.httpGet?.port ?? pr.tcpSocket?.port ?? pr.grpc?.port;
      if (port !== undefined && !portOk(port)) errs.push(`${cp}: ${probe} port ${port} is not a container port`);
    }
    const mounts = (c.volumeMounts ?? []) as Obj[];
    for (const m of mounts) if (!volumes.has(m.name)) errs.push(`${cp}: volumeMount ${m.name} has no volume`);
    if (c.securityContext?.readOnlyRootFilesystem !== true) errs.push(`${cp}: securityContext.readOnlyRootFilesystem must be true`);
    if (c.securityContext?.allowPrivilegeEscalation !== false) errs.push(`${cp}: securityContext.allowPrivilegeEscalation must be false`);
    if (!mounts.some((m) => !m.readOnly && volumes.get(m.name) && !volumes.get(m.name)!.configMap && !volumes.get(m.name)!.secret)) errs.push(`${cp}: a read-only root filesystem needs a writable volume`);
    if (!c.resources?.requests?.cpu || !c.resources?.requests?.memory) errs.push(`${cp}: resources.requests needs cpu and memory`);
    if (!c.resources?.limits?.memory) errs.push(`${cp}: resources.limits.memory is required`);
    for (const e of c.env ?? []) {
      if (!ENV_NAME.test(e.name)) errs.push(`${cp}: env name ${e.name} is not valid`);
      if (e.value !== undefined && e.valueFrom !== undefined) errs.push(`${cp}: env ${e.name} has both value and valueFrom`);
    }
    for (const ef of c.envFrom ?? []) {
      if (ef.secretRef && !find('Secret', ef.secretRef.name)) errs.push(`${cp}: envFrom Secret ${ef.secretRef.name} is not defined`);
      if (ef.configMapRef && !find('ConfigMap', ef.configMapRef.name)) errs.push(`${cp}: envFrom ConfigMap ${ef.configMapRef.name} is not defined`);
    }
  }
}

/** Problems with a rendered set of objects (empty = valid). */
export function check(objs: Obj[]): string[] {
  const errs: string[] = [];
  const seen = new Set<string>();
  for (const o of objs) {
    const name = o.metadata?.name;
    const path = `${o.kind}/${name}`;
    const k = KINDS[o.kind];
    if (!k) {
      errs.push(`${path}: kind ${o.kind} is not one this project deploys`);
      continue;
    }
    if (o.apiVersion !== k.apiVersion) errs.push(`${path}: apiVersion must be ${k.apiVersion}, is ${o.apiVersion}`);
    if (typeof name !== 'string' || !DNS1123.test(name) || name.length > 63) errs.push(`${path}: metadata.name must be a DNS-1123 label`);
    if (seen.has(path)) errs.push(`${path}: defined twice`);
    seen.add(path);
    const { apiVersion: _a, kind: _k, metadata, ...rest } = o;
    checkShape(metadata, META, `${path} metadata`, errs);
    checkShape(rest, k.shape, path, errs);
  }
  const byKind = (kind: string) => objs.filter((o) => o.kind === kind);
  for (const d of byKind('Deployment')) {
    const path = `Deployment/${d.metadata.name}`;
    const podLabels = d.spec?.template?.metadata?.labels;
    if (!matches(d.spec?.selector?.matchLabels, podLabels)) errs.push(`${path}: spec.selector does not match the pod template's labels`);
    if (d.spec?.strategy?.type === 'RollingUpdate' && d.spec.strategy.rollingUpdate?.maxUnavailable !== 0) errs.push(`${path}: rolling updates must keep maxUnavailable 0 (no capacity lost while a new pod warms up)`);
    const pre = d.spec?.template?.spec?.containers?.[0]?.lifecycle?.preStop;
    if (!pre) errs.push(`${path}: the server container needs a preStop delay`);
    checkPod(d, path, objs, errs, { requireProbes: true });
    for (const s of byKind('Service')) {
      if (!matches(s.spec?.selector, podLabels)) continue;
      const ports = new Set((d.spec.template.spec.containers ?? []).flatMap((c: Obj) => (c.ports ?? []).flatMap((p: Obj) => [p.name, p.containerPort])));
      for (const p of s.spec.ports ?? []) if (!ports.has(p.targetPort ?? p.port)) errs.push(`Service/${s.metadata.name}: targetPort ${p.targetPort} is not a port of ${path}`);
    }
  }
  for (const j of byKind('Job')) checkPod(j, `Job/${j.metadata.name}`, objs, errs, { requireProbes: false });
  const pods = byKind('Deployment').map((d) => d.spec?.template?.metadata?.labels);
  for (const s of byKind('Service')) if (!pods.some((l) => matches(s.spec?.selector, l))) errs.push(`Service/${s.metadata.name}: selector matches no Deployment's pods`);
  for (const p of byKind('PodDisruptionBudget')) {
    if (!pods.some((l) => matches(p.spec?.selector?.matchLabels, l))) errs.push(`PodDisruptionBudget/${p.metadata.name}: selector matches no Deployment's pods`);
    if ((p.spec?.minAvailable === undefined) === (p.spec?.maxUnavailable === undefined)) errs.push(`PodDisruptionBudget/${p.metadata.name}: set exactly one of minAvailable and maxUnavailable`);
  }
  for (const h of byKind('HorizontalPodAutoscaler')) {
    const t = h.spec?.scaleTargetRef;
    if (!objs.some((o) => o.kind === t?.kind && o.metadata?.name === t?.name && o.apiVersion === t?.apiVersion)) errs.push(`HorizontalPodAutoscaler/${h.metadata.name}: scaleTargetRef ${t?.kind}/${t?.name} is not defined`);
    if (!(h.spec?.minReplicas >= 1 && h.spec.maxReplicas >= h.spec.minReplicas)) errs.push(`HorizontalPodAutoscaler/${h.metadata.name}: needs 1 <= minReplicas <= maxReplicas`);
  }
  for (const s of byKind('Secret')) {
    for (const [k2, v] of Object.entries((s.data ?? {}) as Obj)) if (!/^[A-Za-z0-9+/]*={0,2}$/.test(v as string)) errs.push(`Secret/${s.metadata.name}: data.${k2} is not base64 (use stringData for plain text)`);
  }
  return errs;
}

export function k8sDir(root: string): string {
  return join(root, 'deploy', 'k8s');
}

