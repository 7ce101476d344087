export { ExperimentRouter, codeOf, type Assignment, type AssignmentReason, type Role, type RouteInput, type RollbackEvent } from '../../serving/experiments/router.js';
export { routeHttp, httpRequestContext, grpcRequestContext, USER_HEADER, VARIANT_HEADER } from './routing.js';
export { ExperimentsCapability, experimentsCapability, experimentsDir, feedbackDbPath } from './capability.js';
export { experimentsConfigSection, parseExperiment, parseVariant, ROUTES, type ExperimentDef, type ExperimentsConfig, type Route, type VariantDef } from '../../serving/experiments/config.js';
export { FeedbackStore } from '../../serving/experiments/store.js';
