/**
 * The gRPC wire types: generated from proto/ (wire.generated.d.ts, by scripts/gen-wire.mjs with
 * protobufjs-cli; `npm run build` regenerates it) and shaped here the way @grpc/proto-loader hands
 * messages over with PROTO_LOADER_OPTIONS (grpc.ts): every scalar and repeated field present
 * (defaults filled), 64-bit integers as numbers. Handlers and tests use these; nobody writes a
 * message type by hand.
 */
import type { catskim } from './wire.generated.js';

/** A message as proto-loader gives it: every field present (message fields are null when unset, which the types leave out). */
export type Wire<T> = T extends readonly (infer U)[] ? Array<Wire<U>> : T extends object ? { -readonly [K in keyof T]-?: Wire<NonNullable<T[K]>> } : T;

/** What a handler may send: proto-loader fills unset fields with defaults; null = an unset message field. */
export type Reply<T> = { [K in keyof T]?: T[K] | null };

export type GenerateRequest = Wire<catskim.v1.IGenerateRequest> & {
  /** proto-loader's synthetic oneof of the proto3 optional `seed`: 'seed' when it was sent. */
  _seed?: string;
};
export type GenerateResponse = Wire<catskim.v1.IGenerateResponse>;
export type GenerateChunk = Wire<catskim.v1.IGenerateChunk>;
export type Choice = Wire<catskim.v1.IChoice>;
export type TokenLogprob = Wire<catskim.v1.ITokenLogprob>;
export type Usage = Wire<catskim.v1.IUsage>;
export type ScoreRequest = Wire<catskim.v1.IScoreRequest>;
export type ScoreResponse = Wire<catskim.v1.IScoreResponse>;
export type ListModelsResponse = Wire<catskim.v1.IListModelsResponse>;
export type ModelInfo = Wire<catskim.v1.IModelInfo>;
export type OodInfo = Wire<catskim.v1.IOodInfo>;
export type GetServerInfoResponse = Wire<catskim.v1.IGetServerInfoResponse>;
