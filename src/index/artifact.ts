/**
 * A prebuilt index artifact: the label indexes of one or more search models, built once
 * (`catskim index build --out DIR`) and loaded read-only by every replica (`search.indexDir`),
 * so a new replica is ready in seconds instead of building for minutes.
 *
 *   DIR/artifact.json        format, version, label set (count + sha256), per model the encoder
 *                            sha256 and dimension, and the size + sha256 of every file below
 *   DIR/<model>/manifest.json, index.hnsw, vectors.f32   (src/index/vector-index.ts)
 *
 * artifact.json is written last, atomically: a directory without it is not an artifact. Loading
 * checks the artifact against what the server would build (encoder, labels) and each model's
 * manifest against the artifact's checksum of it; the index files themselves are checksummed by
 * VectorIndex.load in the search worker. Any mismatch is refused with a message that says what
 * differs; the server then builds its own index into its cache directory.
 */
import { existsSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { sha256File } from '../common/checksum.js';
import { VectorIndex, type IndexManifest } from './vector-index.js';

export const ARTIFACT_FORMAT = 'catskim-index-artifact';
export const ARTIFACT_VERSION = 1;

export interface ArtifactManifest {
  format: typeof ARTIFACT_FORMAT;
  version: typeof ARTIFACT_VERSION;
  createdAt: string;
  labels: { count: number; sha256: string };
  models: Record<string, { encoderSha256: string; dim: number; M: number; efConstruction: number }>;
  files: Record<string, { bytes: number; sha256: string }>;
}

export class ArtifactError extends Error {
  override name = 'ArtifactError';
}

function filesUnder(root: string, dir = root): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...filesUnder(root, p));
    else if (!(dir === root && name === 'artifact.json') && !name.endsWith('.tmp')) out.push(relative(root, p));
  }
  return out;
}

/** Seal a directory of built model indexes (DIR/<model>/) into an artifact: writes DIR/artifact.json. */
export function sealArtifact(dir: string, models: readonly string[], labels: { count: number; sha256: string }): ArtifactManifest {
  const entry: ArtifactManifest['models'] = {};
  for (const model of models) {
    const m = VectorIndex.readManifest(join(dir, model));
    if (!m) throw new ArtifactError(`cannot seal ${dir}: no index for model ${model}`);
    if (m.labelsSha256 !== labels.sha256 || m.count !== labels.count) throw new ArtifactError(`cannot seal ${dir}: the ${model} index was built over another label set`);
    entry[model] = { encoderSha256: m.encoderSha256, dim: m.dim, M: m.M, efConstruction: m.efConstruction };
  }
  const files: ArtifactManifest['files'] = {};
  for (const f of filesUnder(dir)) files[f] = { bytes: statSync(join(dir, f)).size, sha256: sha256File(join(dir, f)) };
  const manifest: ArtifactManifest = { format: ARTIFACT_FORMAT, version: ARTIFACT_VERSION, createdAt: new Date().toISOString(), labels, models: entry, files };
  const tmp = join(dir, `artifact.json.${process.pid}.tmp`);
  writeFileSync(tmp, JSON.stringify(manifest, null, 1));
  renameSync(tmp, join(dir, 'artifact.json'));
  return manifest;
}

export function readArtifact(dir: string): ArtifactManifest {
  const p = join(dir, 'artifact.json');
  if (!existsSync(p)) throw new ArtifactError(`${dir} is not an index artifact (no artifact.json; build one with: catskim index build --out ${dir})`);
  let a: ArtifactManifest;
  try {
    a = JSON.parse(readFileSync(p, 'utf8')) as ArtifactManifest;
  } catch (e) {
    throw new ArtifactError(`${p} is not valid JSON: ${(e as Error).message}`);
  }
  if (a?.format !== ARTIFACT_FORMAT) throw new ArtifactError(`${p} is not a ${ARTIFACT_FORMAT} manifest`);
  if (a.version !== ARTIFACT_VERSION) throw new ArtifactError(`${p} is artifact version ${a.version}; this server reads version ${ARTIFACT_VERSION}: rebuild it with this version's catskim index build`);
  return a;
}

export interface ArtifactExpectation {
  model: string;
  encoderSha256: string;
  dim: number;
  labelsSha256: string;
  labelCount: number;
}

/**
 * The directory of `model`'s index inside the artifact, once it fits what the server expects.
 * Throws ArtifactError saying what differs. `full` also checksums the index files (the CLI's
 * `index verify`); the server leaves that to VectorIndex.load, which does it anyway.
 */
export function verifyArtifact(dir: string, expect: ArtifactExpectation, opts: { full?: boolean } = {}): { dir: string; manifest: IndexManifest; artifact: ArtifactManifest } {
  const a = readArtifact(dir);
  const m = a.models[expect.model];
  if (!m) throw new ArtifactError(`index artifact ${dir} has no index for model ${expect.model} (it has: ${Object.keys(a.models).join(', ') || 'none'})`);
  if (m.encoderSha256 !== expect.encoderSha256) {
    throw new ArtifactError(`index artifact ${dir}: model ${expect.model} was built with encoder sha256 ${m.encoderSha256.slice(0, 12)}…, this server's encoder is ${expect.encoderSha256.slice(0, 12)}… (rebuild the artifact for this model version)`);
  }
  if (m.dim !== expect.dim) throw new ArtifactError(`index artifact ${dir}: model ${expect.model} has dimension ${m.dim}, the encoder ${expect.dim}`);
  if (a.labels.sha256 !== expect.labelsSha256 || a.labels.count !== expect.labelCount) {
    throw new ArtifactError(`index artifact ${dir} was built over another label set (${a.labels.count} labels, sha256 ${a.labels.sha256.slice(0, 12)}…; this server has ${expect.labelCount}, ${expect.labelsSha256.slice(0, 12)}…)`);
  }
  const check = (f: string) => {
    const info = a.files[f];
    if (!info) throw new ArtifactError(`index artifact ${dir}: ${f} is not listed in artifact.json`);
    const p = join(dir, f);
    if (!existsSync(p)) throw new ArtifactError(`index artifact ${dir}: ${f} is missing`);
    if (statSync(p).size !== info.bytes) throw new ArtifactError(`index artifact ${dir}: ${f} has ${statSync(p).size} bytes, artifact.json says ${info.bytes} (corrupted or truncated)`);
    const sha = sha256File(p);
    if (sha !== info.sha256) throw new ArtifactError(`index artifact ${dir}: ${f} checksum mismatch (sha256 ${sha.slice(0, 12)}…, artifact.json ${info.sha256.slice(0, 12)}…): corrupted`);
  };
  const modelDir = join(dir, expect.model);
  check(join(expect.model, 'manifest.json'));
  const manifest = VectorIndex.readManifest(modelDir)!;
  for (const f of Object.keys(manifest.files)) {
    const rel = join(expect.model, f);
    const info = a.files[rel];
    if (!info || info.sha256 !== manifest.files[f].sha256) throw new ArtifactError(`index artifact ${dir}: ${rel} in the model manifest does not match artifact.json`);
    if (opts.full) check(rel);
    else if (!existsSync(join(dir, rel)) || statSync(join(dir, rel)).size !== info.bytes) throw new ArtifactError(`index artifact ${dir}: ${rel} is missing or has the wrong size (corrupted or truncated)`);
  }
  return { dir: modelDir, manifest, artifact: a };
}
