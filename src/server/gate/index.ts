export { Gate, OOD_JSON_SCHEMA, oodToGrpc, type GateDecision, type GateOutcome, type OodInfo, type ResolvedPolicy } from './gate.js';
export { DetectorCapability, detectorCapability } from './capability.js';
export { detectorConfigSection, GATE_ACTIONS, GATE_ROUTES, type DetectorConfig, type GateAction, type GatePolicy, type GateRoute, type RouteGateConfig } from './config.js';
export { gateGenerateRequest, gateSearchQuery, type GatedGenerate, type GatedSearch } from './wire.js';
