/**
 * HTTP errors raised before a route runs (issue 16): Node's parser errors (bad headers, a
 * duplicate or negative Content-Length, bad chunked encoding, a malformed request line), the
 * request/header timeouts, and fastify's bad-URL error. They get the one error shape
 * {"error":{code,message,field,requestId}} like every other 4xx, and an x-request-id.
 */
import { randomUUID } from 'node:crypto';
import { STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { ErrorCode } from '../common/errors.js';
import { counter } from '../common/metrics.js';

interface ClientErrorInfo {
  status: number;
  code: ErrorCode;
  field?: string;
  message: string;
}

/** What a parser error code (llhttp's HPE_*, Node's ERR_HTTP_*) means for the client. */
export function describeClientError(err: NodeJS.ErrnoException & { reason?: string }): ClientErrorInfo {
  const c = err.code ?? '';
  // llhttp says what it saw ("Duplicate Content-Length", "Invalid header value char")
  const why = typeof err.reason === 'string' && err.reason ? err.reason : c || 'malformed request';
  const bad = (field: string | undefined, what: string): ClientErrorInfo => ({ status: 400, code: 'INVALID_ARGUMENT', field, message: `${field ? `${field}: ` : ''}${what} (${why})` });
  switch (c) {
    case 'HPE_HEADER_OVERFLOW':
      return { status: 431, code: 'INVALID_ARGUMENT', field: 'headers', message: 'headers: the request headers are larger than the server accepts' };
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return { status: 408, code: 'DEADLINE_EXCEEDED', field: 'body', message: 'the request was not received in time (http.requestTimeoutMs)' };
    case 'HPE_INVALID_CONTENT_LENGTH':
    case 'HPE_UNEXPECTED_CONTENT_LENGTH':
      return bad('headers.content-length', 'must be one non-negative integer, and not together with Transfer-Encoding');
    case 'HPE_INVALID_TRANSFER_ENCODING':
      return bad('headers.transfer-encoding', 'only "chunked", last, is accepted');
    case 'HPE_INVALID_CHUNK_SIZE':
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
    case 'HPE_INVALID_EOF_STATE':
      return bad('body', 'malformed chunked transfer encoding');
    case 'HPE_INVALID_URL':
    case 'HPE_INVALID_CONSTANT':
      return bad('url', 'malformed request line');
    case 'HPE_INVALID_METHOD':
      return bad('method', 'not an HTTP method');
    case 'HPE_INVALID_VERSION':
      return bad('version', 'not a supported HTTP version');
    case 'HPE_INVALID_HEADER_TOKEN':
    case 'HPE_LF_EXPECTED':
    case 'HPE_CR_EXPECTED':
    case 'HPE_UNEXPECTED_SPACE':
    case 'HPE_STRICT':
      return bad('headers', 'malformed header line');
    default:
      // the framing of the request as a whole
      return bad('request', 'malformed HTTP request');
  }
}

/** fastify's clientErrorHandler: answer in our shape, then close the connection. */
export function clientErrorHandler(logger: Logger, registry: Registry): (err: NodeJS.ErrnoException, socket: Socket) => void {
  const rejected = counter(registry, 'catskim_http_client_errors_total', 'Requests the HTTP parser refused before any route ran (bad headers, framing, URL; timeouts), by status', ['status']);
  return (err, socket) => {
    // a reset connection has nobody to answer
    if (err.code === 'ECONNRESET' || socket.destroyed) return;
    const info = describeClientError(err);
    const requestId = randomUUID();
    rejected.inc({ status: String(info.status) });
    logger.info({ requestId, status: info.status, parserCode: err.code, field: info.field }, 'client error before routing');
    if (socket.writable && !(socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent) {
      const body = JSON.stringify({ error: { code: info.code, message: info.message, ...(info.field ? { field: info.field } : {}), requestId } });
      socket.end(
        `HTTP/1.1 ${info.status} ${STATUS_CODES[info.status]}\r\n` +
          `Content-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
          `x-request-id: ${requestId}\r\nConnection: close\r\n\r\n${body}`,
      );
      // end() flushes the answer; destroy anyway if the peer never reads it
      setTimeout(() => socket.destroy(), 1000).unref();
    } else socket.destroy();
  };
}

/** Node answers an unknown `Expect` value with a bare 417 before any route; answer it in our shape. */
export function answerExpectationFailed(server: Server): void {
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    const requestId = randomUUID();
    const body = JSON.stringify({ error: { code: 'INVALID_ARGUMENT', message: 'headers.expect: only "100-continue" is supported', field: 'headers.expect', requestId } });
    res.writeHead(417, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), 'x-request-id': requestId, connection: 'close' });
    res.end(body);
    req.resume();
  });
}
