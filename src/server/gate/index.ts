export { OOD_JSON_SCHEMA, oodToGrpc } from './ood.js';
export { Gate, type GateDecision, type GateOutcome, type OodInfo, type ResolvedPolicy } from '../../serving/gate/gate.js';
export { DetectorCapability, detectorCapability } from './capability.js';
export { detectorConfigSection, GATE_ACTIONS, GATE_ROUTES, type DetectorConfig, type GateAction, type GatePolicy, type GateRoute, type RouteGateConfig } from '../../serving/gate/config.js';
export { gateSearchQuery, type GatedSearch } from '../../serving/gate/wire.js';
