/** How an API names request fields in its errors: "body.max_tokens" (HTTP) or "max_tokens" (gRPC). */
export type FieldNamer = (name: string) => string;

/** `fieldNames('body.')('max_tokens')` = "body.max_tokens"; gRPC uses `fieldNames('')`. */
export function fieldNames(prefix: string): FieldNamer {
  return (name) => prefix + name;
}
