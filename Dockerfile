# One image for every Continuum process. The command names the entry point, relative to /app:
#   apps/all-in-one/src/main.ts (the default), apps/splitter/src/main.ts, apps/transport/src/main.ts,
#   apps/journal-writer/src/main.ts, apps/checkpoint-scheduler/src/main.ts,
#   apps/recovery-orchestrator/src/main.ts, apps/cli/src/main.ts, or deploy/demo-workload.ts.
# Build: docker build -t continuum:0.1.0 .   Run: docker run continuum:0.1.0 apps/splitter/src/main.ts
# Configuration is the environment (docs/deployment.md lists it); see docker-compose.yml and k8s/.

# Node 20 on Debian 12 (bookworm), slim: the Node version the project is developed and tested on.
ARG NODE_IMAGE=node:20.20.2-bookworm-slim

FROM ${NODE_IMAGE} AS dependencies
WORKDIR /app
# A C compiler, make and python3 for node-gyp: npm builds the project's one native addon
# (native/file-advice, posix_fadvise for the volume files) while it installs. It is an optional
# dependency, so an image built without them still works, with the kernel's readahead on the volumes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ make python3 \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
COPY native ./native
# The processes run their TypeScript through @swc-node/register (tools/register.cjs), as `npm start`
# does, so that and @swc/core are runtime needs here although package.json lists them for development.
# npm ci then installs exactly the locked versions of the production tree plus those two; jest, eslint,
# nx and the other development tools stay out of the image.
RUN node -e "const fs = require('node:fs'); const p = JSON.parse(fs.readFileSync('package.json', 'utf8')); \
      for (const n of ['@swc-node/register', '@swc/core']) { p.dependencies[n] = p.devDependencies[n]; delete p.devDependencies[n]; } \
      fs.writeFileSync('package.json', JSON.stringify(p, null, 2));" \
 && npm ci --omit=dev --no-audit --no-fund \
 && npm cache clean --force

FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production \
    CDP_DATA_DIR=/var/lib/continuum/data \
    CDP_HTTP_HOST=0.0.0.0 \
    CDP_HTTP_PORT=8080 \
    CDP_NBD_HOST=0.0.0.0 \
    CDP_RECOVERY_NBD_HOST=0.0.0.0
WORKDIR /app
# Owned by root and not writable by the service user: the code cannot be changed by the process it runs.
COPY --from=dependencies /app/node_modules ./node_modules
# node_modules/continuum-file-advice links here; the addon was built in place.
COPY --from=dependencies /app/native ./native
COPY package.json tsconfig.json tsconfig.base.json ./
COPY tools/register.cjs ./tools/
COPY libs ./libs
COPY apps ./apps
COPY deploy/healthcheck.cjs deploy/demo-workload.ts ./deploy/
# Data and journal directories exist in the image, owned by the service user, so that a fresh named
# volume mounted on them starts with that owner.
RUN mkdir -p /var/lib/continuum/data /var/lib/continuum/journal \
 && chown -R node:node /var/lib/continuum
# The official image's unprivileged user (uid 1000).
USER node
# HTTP API and probes; the splitter's NBD exports; the recovery orchestrator's point-in-time exports.
EXPOSE 8080 10809 10810
# Healthy means ready: /api/health/ready answers 200 (503 until the service's dependencies answer).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["node", "deploy/healthcheck.cjs"]
# Exec form: node is PID 1 and receives SIGTERM itself, so `docker stop` is a graceful shutdown.
ENTRYPOINT ["node", "-r", "./tools/register.cjs"]
CMD ["apps/all-in-one/src/main.ts"]
