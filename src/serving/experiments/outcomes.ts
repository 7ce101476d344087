/**
 * What became of one routed request, from the variant's point of view. The experiment report and
 * the guard rails both count only `variant_error` against a variant: a client's mistake, an OOD
 * rejection or a request shed under load says nothing about the variant's quality.
 */
export type OutcomeClass = 'ok' | 'variant_error' | 'client_error' | 'gate_rejected' | 'shed' | 'cancelled';

/** Classifies an impression status ('ok' or a catskim error code). Unknown codes are the server's fault. */
export function outcomeClass(status: string): OutcomeClass {
  switch (status) {
    case 'ok':
      return 'ok';
    case 'INVALID_ARGUMENT':
    case 'NOT_FOUND':
    case 'UNAUTHENTICATED':
    case 'PERMISSION_DENIED':
      return 'client_error';
    case 'FAILED_PRECONDITION':
      return 'gate_rejected';
    case 'RESOURCE_EXHAUSTED':
      return 'shed';
    case 'CANCELLED':
      return 'cancelled';
    default:
      // INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, UNKNOWN, anything new
      return 'variant_error';
  }
}
