#!/usr/bin/env bash
# GPU check for the CAT decode graphs (issue 19): on a host with an NVIDIA GPU and onnxruntime-node's
# CUDA execution provider, load the bundled CAT-16 and dense models on CUDA and on CPU, check that
# the decode outputs agree, and time the decode call at ~4k context, batch 1/8/32 on both.
#
#   npm run build && bash loadtest/gpu-check.sh [--no-gpu-probe] [-- gpu-check.js options]
#       gpu-check.js options: --batches 1,8,32 --rounds 5 --context 4096 --tol 1e-3 --json out.json
#
# Exit: 0 parity held (timings printed), 1 parity failed, 2 no NVIDIA GPU visible,
#       3 the CUDA provider libraries of onnxruntime-node are missing or cannot resolve their
#       dependencies, 4 ORT could not load the CUDA provider anyway, 5 not built / no node.
#   --no-gpu-probe      skip the GPU probe (containers where nvidia-smi is absent but the device works)
#   ORT_BIN_DIR=dir     where onnxruntime-node's native libraries are (default: found from node_modules)
set -uo pipefail
cd "$(dirname "$0")/.."

probe=1
args=()
for a in "$@"; do
  case "$a" in
    --no-gpu-probe) probe=0 ;;
    --) ;;
    *) args+=("$a") ;;
  esac
done

say() { echo "gpu-check: $*" >&2; }

if ! command -v node >/dev/null 2>&1; then say "node is not on PATH"; exit 5; fi
if [ ! -f dist/loadtest/gpu-check.js ]; then say "dist/loadtest/gpu-check.js is missing: run \`npm run build\` first"; exit 5; fi

# 1) a GPU
if [ "$probe" = 1 ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    say "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
  elif ls /dev/nvidia[0-9]* >/dev/null 2>&1; then
    say "GPU device nodes present ($(ls /dev/nvidia[0-9]* | tr '\n' ' ')), nvidia-smi unavailable"
  else
    say "no NVIDIA GPU on this host: nvidia-smi is not installed or lists no GPU, and there is no /dev/nvidia0."
    say "Nothing to check here; run this script on a GPU host (CI does not depend on it)."
    exit 2
  fi
fi

# 2) onnxruntime-node's CUDA provider libraries (the npm package bundles the CPU provider only)
bin="${ORT_BIN_DIR:-}"
if [ -z "$bin" ]; then
  bin=$(node -e 'const p=require("path");const d=p.dirname(require.resolve("onnxruntime-node/package.json"));const fs=require("fs");const b=p.join(d,"bin");for(const v of fs.readdirSync(b)){const x=p.join(b,v,"linux",process.arch);if(fs.existsSync(x)){console.log(x);break}}' 2>/dev/null)
fi
ortver=$(node -p 'require("onnxruntime-node/package.json").version' 2>/dev/null || echo '?')
cuda_lib="$bin/libonnxruntime_providers_cuda.so"
shared_lib="$bin/libonnxruntime_providers_shared.so"
if [ ! -f "$cuda_lib" ] || [ ! -f "$shared_lib" ]; then
  say "the CUDA execution provider of onnxruntime-node $ortver is not installed:"
  [ -f "$cuda_lib" ] || say "  missing $cuda_lib"
  [ -f "$shared_lib" ] || say "  missing $shared_lib"
  say "The npm package ships the CPU provider only. On a GPU host with internet access:"
  say "  npm run ort:cuda        (= ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install.js)"
  say "Offline, the only registry source known (see ../shared/notes/machine.md) is npm"
  say "  com.github.asus4.onnxruntime.linux-x64-gpu 0.4.9 = the ORT 1.29.0 CUDA-13 provider, which needs"
  say "  onnxruntime-node 1.29.x (this project pins $ortver): copy its two .so files into $bin"
  say "  only together with a matching onnxruntime-node."
  exit 3
fi
missing=$(LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:$bin" ldd "$cuda_lib" 2>&1 | awk '/not found/ {print $1}' | sort -u | tr '\n' ' ')
if [ -n "$missing" ]; then
  say "$cuda_lib is installed but these libraries it needs are not found: $missing"
  say "Put the CUDA runtime, cuBLAS, cuFFT, cuRAND and cuDNN directories on LD_LIBRARY_PATH. Where they come"
  say "as Python wheels (nvidia-*), they are under site-packages/nvidia/*/lib:"
  for py in python3 /usr/bin/python3; do
    dirs=$($py -c 'import glob, os, site; print(":".join(sorted(set(os.path.dirname(p) for s in site.getsitepackages() for p in glob.glob(os.path.join(s, "nvidia", "*", "lib", "*.so*"))))))' 2>/dev/null)
    if [ -n "$dirs" ]; then say "  export LD_LIBRARY_PATH=$dirs:\$LD_LIBRARY_PATH"; break; fi
  done
  exit 3
fi

# 3) parity and timings
node dist/loadtest/gpu-check.js ${args[@]+"${args[@]}"}
rc=$?
[ "$rc" = 4 ] && say "ORT did not load the CUDA provider although its libraries are present: check the CUDA/cuDNN major versions against the provider's build (ldd $cuda_lib)."
exit "$rc"
