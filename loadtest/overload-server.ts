/**
 * The server process loadtest/overload.ts drives: the real process entry (runServerProcess: same
 * flags, env and signal handling as main.ts) with core, the OOD gate (unless OVERLOAD_GATE=0) and
 * search (or generation, OVERLOAD_ROUTE=generate). OVERLOAD_LABELS=fixture (default: the 2,038 labels of the SKIM fixture, so the index
 * builds in seconds) or full (all of WordNet; the index is built once into search.cacheDir).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadWordnetLabels } from '../src/index/wordnet.js';
import type { Capability, CapabilityFactory } from '../src/server/capability.js';
import { PACKAGE_ROOT, type Config } from '../src/server/config.js';
import { coreCapability } from '../src/server/core.js';
import { detectorCapability } from '../src/server/gate/index.js';
import { generationCapability } from '../src/server/generation/capability.js';
import { runServerProcess } from '../src/server/process.js';
import { SearchCapability } from '../src/server/search/capability.js';

const full = process.env.OVERLOAD_LABELS === 'full';
const ids = full ? undefined : new Set<string>((JSON.parse(readFileSync(join(PACKAGE_ROOT, 'models/skim/export/skim/fixture.json'), 'utf8')) as { label_ids: string[] }).label_ids);
const baseLabels = ids ? loadWordnetLabels().filter((l) => ids.has(l.id)) : undefined;

const caps: Array<CapabilityFactory<Config> | Capability> = [coreCapability];
if (process.env.OVERLOAD_GATE !== '0') caps.push(detectorCapability);
// OVERLOAD_ROUTE=generate serves generation instead of search
if (process.env.OVERLOAD_ROUTE === 'generate') caps.push(generationCapability);
else caps.push((ctx) => new SearchCapability(ctx, {}, { baseLabels }));
await runServerProcess({ capabilities: caps });
