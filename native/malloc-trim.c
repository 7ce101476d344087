/*
 * malloc_trim(0) for Node (N-API): hands freed heap memory back to the OS. `npm start` sets glibc's
 * trim and mmap thresholds to 4 GiB so decode steps never page-fault fresh memory; the price is
 * that a burst's freed K/V buffers otherwise stay resident forever. The engine calls this when it
 * goes idle. Built by scripts/build-malloc-trim.mjs into dist/native/ (glibc only; optional).
 */
#include <malloc.h>
#include <node_api.h>

static napi_value Trim(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  napi_get_boolean(env, malloc_trim(0) != 0, &out);
  return out;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  if (napi_create_function(env, "trim", NAPI_AUTO_LENGTH, Trim, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "trim", fn) != napi_ok) return NULL;
  return exports;
}
