export { ExperimentRouter, codeOf, type Assignment, type AssignmentReason, type Role, type RouteInput, type RollbackEvent } from './router.js';
export { routeHttp, routeGrpc, USER_HEADER, VARIANT_HEADER } from './routing.js';
export { ExperimentsCapability, experimentsCapability, experimentsDir, feedbackDbPath } from './capability.js';
export { experimentsConfigSection, parseExperiment, parseVariant, ROUTES, type ExperimentDef, type ExperimentsConfig, type Route, type VariantDef } from './config.js';
export { FeedbackStore } from './store.js';
