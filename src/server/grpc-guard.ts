/**
 * Two things grpc-js does not do for us (issue 16):
 *  - metadata string values must be printable ASCII (grpc-js throws on anything else, and a throw
 *    while building an error reply leaves the call unanswered), and `grpc-message` is sent through
 *    encodeURI, which throws on a lone surrogate;
 *  - a request that cannot be decoded becomes INTERNAL "Error deserializing request" inside
 *    grpc-js; it is the client's mistake, so it must be INVALID_ARGUMENT.
 */
import * as grpc from '@grpc/grpc-js';

/**
 * Printable ASCII only: every other UTF-16 unit becomes `\uXXXX`. Applied to JSON text it keeps
 * the JSON valid and equal once parsed (outside strings JSON is ASCII already).
 */
export function asciiMetadataValue(s: string): string {
  return s.replace(/[^\x20-\x7e]/g, (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** Lone surrogates replaced by U+FFFD, so encodeURI (grpc-message) cannot throw. */
export function wellFormed(s: string): string {
  return s.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');
}

/** What a request deserializer returns instead of throwing. */
class UndecodableRequest {
  constructor(readonly reason: string) {}
}

function undecodableStatus(method: string, u: UndecodableRequest): Partial<grpc.StatusObject> {
  return { code: grpc.status.INVALID_ARGUMENT, details: `request: cannot decode the ${method} message as protobuf (${wellFormed(u.reason)})`, metadata: new grpc.Metadata() };
}

type Handler = (call: any, callback?: any) => void;
type Register = (name: string, handler: Handler, serialize: (v: unknown) => Buffer, deserialize: (b: Buffer) => unknown, type: string) => boolean;

/**
 * Make every method registered on `server` (ours, health, reflection) answer INVALID_ARGUMENT for
 * a message it cannot decode. Works by wrapping grpc-js's Server.register (what addService calls
 * per method): the deserializer returns a marker instead of throwing, and the handler answers the
 * marker before the implementation sees it.
 */
export function answerUndecodableRequests(server: grpc.Server): void {
  const s = server as unknown as { register: Register };
  const register = s.register.bind(server);
  s.register = (name, handler, serialize, deserialize, type) => {
    const decode = (b: Buffer): unknown => {
      try {
        return deserialize(b);
      } catch (e) {
        return new UndecodableRequest((e as Error)?.message ?? String(e));
      }
    };
    return register(name, guardHandler(name, handler, type), serialize, decode, type);
  };
}

function guardHandler(method: string, handler: Handler, type: string): Handler {
  switch (type) {
    case 'unary':
      return (call, callback) => (call.request instanceof UndecodableRequest ? callback(undecodableStatus(method, call.request)) : handler(call, callback));
    case 'serverStream':
      return (call) => (call.request instanceof UndecodableRequest ? call.emit('error', undecodableStatus(method, call.request)) : handler(call));
    default:
      // request streams: the first undecodable message ends the call; the handler sees no more
      return (call, callback) => {
        const emit = call.emit.bind(call) as (ev: string | symbol, ...a: unknown[]) => boolean;
        let failed = false;
        call.emit = (ev: string | symbol, ...a: unknown[]) => {
          if (failed && (ev === 'data' || ev === 'end')) return false;
          if (ev === 'data' && a[0] instanceof UndecodableRequest) {
            failed = true;
            const st = undecodableStatus(method, a[0]);
            if (type === 'clientStream') callback(st);
            else emit('error', st);
            return true;
          }
          return emit(ev, ...a);
        };
        if (type === 'clientStream') {
          handler(call, (...r: unknown[]) => {
            if (!failed) callback(...r);
          });
        } else handler(call);
      };
  }
}
