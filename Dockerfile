# nixreg in a container: `docker build -t nixreg . && docker run -p 5000:5000 -v nixreg-data:/data nixreg`
# Mount your own image expressions at /images to serve them (the examples are the default).

FROM node:20-bookworm-slim AS build
# better-sqlite3 compiles from source when no prebuilt binary is reachable.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
RUN npx tsc -p . && npm prune --omit=dev

FROM node:20-bookworm-slim
# nix-bin: builds images on pull (Debian's package sets up single-user Nix for root, with
# the sandbox off, which a container needs). busybox-static: used by examples/hello.nix.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nix-bin ca-certificates busybox-static \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist/src ./dist/src
# Read at run time by the builder (src/build/nix.ts looks for it here).
COPY src/build/eval.nix ./src/build/eval.nix
COPY examples /images
VOLUME /data
EXPOSE 5000
# Node handles SIGTERM itself (graceful shutdown), so it can be PID 1.
ENTRYPOINT ["node", "/app/dist/src/main.cjs"]
CMD ["serve", "--listen", "0.0.0.0:5000", "--data", "/data", "--images", "/images"]
