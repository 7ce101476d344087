/**
 * How the OOD gate's verdict (src/serving/gate/gate.ts OodInfo) goes on the wire: the JSON schema
 * of `ood` in HTTP responses and the catskim.v1.OodInfo message.
 */
import type { OodInfo } from '../../serving/gate/gate.js';
import type * as Wire from '../wire.js';

/** JSON schema of `ood` for fastify routes (response schemas drop properties they do not list). */
export const OOD_JSON_SCHEMA = {
  type: 'object',
  description:
    'OOD gate result: score = P(OOD) from the CnC detector, gated iff score > tau; label/label_prob = top in-distribution class and its calibrated probability given that the input is in distribution (softmax over the in-distribution classes, temperature-scaled on validation).',
  required: ['score', 'tau', 'gated', 'action', 'label', 'label_prob'],
  properties: {
    score: { type: 'number' },
    tau: { type: 'number' },
    gated: { type: 'boolean' },
    action: { type: 'string', enum: ['reject', 'flag', 'fallback'] },
    label: { type: 'string' },
    label_prob: { type: 'number' },
    fallback_to: { type: 'string' },
  },
} as const;

/** The catskim.v1.OodInfo message of a verdict (null when gating is off). */
export function oodToGrpc(ood: OodInfo | undefined): Wire.OodInfo | null {
  if (!ood) return null;
  return { score: ood.score, tau: ood.tau, gated: ood.gated, action: ood.action, label: ood.label, labelProb: ood.label_prob, fallbackTo: ood.fallback_to ?? '' };
}
