# catskim: CPU image by default.
#   docker build -t catskim .
# GPU image (CUDA provider downloaded by onnxruntime-node's installer, needs network at build):
#   docker build -t catskim:cuda --build-arg RUNTIME_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                --build-arg ORT_INSTALL=cuda12 .
# and run it with CATSKIM_ONNX_PROVIDERS=cuda,cpu (default) on a host with the NVIDIA runtime.

ARG NODE_IMAGE=node:20-bookworm-slim
# Base of the final stage; a CUDA runtime image for GPU builds (Node is copied in from NODE_IMAGE).
ARG RUNTIME_IMAGE=node:20-bookworm-slim

# ---- build: compile TypeScript with dev dependencies ------------------------------------------
FROM ${NODE_IMAGE} AS build
ARG ORT_INSTALL=skip
ENV ONNXRUNTIME_NODE_INSTALL=${ORT_INSTALL}
WORKDIR /app
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
# package.json allowScripts keeps onnxruntime-node's installer from running (it downloads the CUDA
# provider); a GPU build runs it on purpose.
RUN npm ci && if [ "$ORT_INSTALL" != "skip" ]; then npm run ort:cuda; fi
COPY tsconfig.json ./
COPY src ./src
COPY test ./test
COPY proto ./proto
COPY native ./native
COPY scripts/build-malloc-trim.mjs ./scripts/
# dist/native/malloc-trim.node: lets idle engines return freed memory (src/common/malloc-trim.ts)
RUN npx tsc -p tsconfig.json && node scripts/build-malloc-trim.mjs && rm -rf dist/test && npm prune --omit=dev

# ---- runtime ---------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS node
FROM ${RUNTIME_IMAGE} AS runtime
# Node from the official image (a no-op when RUNTIME_IMAGE is already a Node image)
COPY --from=node /usr/local/bin/node /usr/local/bin/node
ENV NODE_ENV=production \
    CATSKIM_HOST=0.0.0.0 \
    CATSKIM_HTTP_PORT=8080 \
    CATSKIM_GRPC_PORT=50051 \
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295
WORKDIR /app
# A fixed uid/gid (10001): Kubernetes' runAsNonRoot checks a numeric user (deploy/k8s).
RUN (getent group catskim || groupadd --system --gid 10001 catskim) \
 && (id -u catskim >/dev/null 2>&1 || useradd --system --uid 10001 --gid catskim --home-dir /app --shell /usr/sbin/nologin catskim)
COPY --from=build --chown=root:root /app/package.json ./
COPY --from=build --chown=root:root /app/node_modules ./node_modules
COPY --from=build --chown=root:root /app/dist ./dist
COPY --chown=root:root proto ./proto
COPY --chown=root:root models ./models
# the web console's static files (/ui)
COPY --chown=root:root console ./console
# The only writable path: HNSW indexes built at first start (var/search) and the experiments'
# state and feedback database (var/experiments). Mount a volume here to keep them across restarts.
RUN mkdir -p /app/var && chown catskim:catskim /app/var
VOLUME ["/app/var"]
USER 10001:10001
EXPOSE 8080 50051
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.CATSKIM_HTTP_PORT||8080)+'/readyz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["node", "dist/src/main.js"]
