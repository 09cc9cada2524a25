# nixreg in a container: `docker build -t nixreg . && docker run -p 5000:5000 -v nixreg-data:/data nixreg`
# Mount your own image expressions at /images to serve them (the examples are the default).
# Any Debian bookworm image with Node 20 on its PATH can be the base, e.g. one built
# without Docker Hub: `docker build --build-arg NODE_IMAGE=my/node:20 -t nixreg .`
ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS build
# better-sqlite3 compiles from source when no prebuilt binary is reachable (node-gyp then
# needs Node's headers: online it downloads them; offline the base must provide them and
# point npm's `nodedir` at them).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# npm ci's install script also compiles native/sendfile.c, the addon that sends blob
# bodies by sendfile(2) (src/registry/zero-copy.ts).
COPY package.json package-lock.json binding.gyp ./
COPY native ./native
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
RUN npx tsc -p . && npm prune --omit=dev --no-audit --no-fund

FROM ${NODE_IMAGE}
# nix-bin builds images on pull; busybox-static is what examples/hello.nix copies into the
# store; git is what --packages git+… (a package set pinned by tags) and Nix's fetchGit run. Nix runs builds as root's build users, which Debian creates in the recommended
# nix-setup-systemd package; that package would bring systemd into the image, so its
# postinst's users are created here instead (without nix-users, the group of nix-daemon's
# socket: no daemon runs here).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nix-bin ca-certificates busybox-static git \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --force --system nixbld \
 && for n in 1 2 3 4 5 6 7 8 9 10; do \
      useradd --system --comment "Nix build user $n" --home-dir /var/empty --gid nixbld --groups nixbld \
        --no-user-group --shell /usr/sbin/nologin "nixbld$n"; \
    done
COPY docker/nix.conf /etc/nix/nix.conf
WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist/src ./dist/src
# Named, not globbed: an image whose addon did not build must fail here, not copy blobs
# through user space unnoticed.
COPY --from=build /app/build/Release/nixreg_sendfile.node ./build/Release/
# Read at run time by the builder (src/build/nix/nix.ts looks for them here, beside dist/).
COPY src/build/nix/*.nix ./src/build/nix/
COPY examples /images
VOLUME /data
EXPOSE 5000
# Node handles SIGTERM itself (graceful shutdown), so it can be PID 1.
ENTRYPOINT ["node", "/app/dist/src/main.cjs"]
CMD ["serve", "--listen", "0.0.0.0:5000", "--data", "/data", "--images", "/images"]
