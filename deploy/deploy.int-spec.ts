import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { type AddressInfo } from 'node:net';
import { join, relative } from 'node:path';
import Ajv from 'ajv';
import { parse } from 'yaml';
import { CONFIG_VARIABLES, loadConfig } from '@cdp/config';
import { type TempDir, createTestDatabase, findTool, itWithTools, runTool, runToolOk, startAllInOne, tempDir } from '@cdp/testing';
import { type KubernetesObject, ManifestValidator, parseYamlStream } from './manifest.validator';

/**
 * The deployment artifacts, checked offline (no container engine, no cluster): docker-compose.yml by
 * Debian's docker-compose and by the Compose Specification's schema, every kustomize overlay under
 * k8s/overlays rendered and validated against strict Kubernetes schemas, the services' environment
 * against the configuration loader the processes use, and the image's health check and demo workload
 * against real processes.
 */

const ROOT = join(__dirname, '..');
const COMPOSE_FILE = join(ROOT, 'docker-compose.yml');
const OVERLAYS = join(ROOT, 'k8s', 'overlays');
// kustomize itself where installed, else kubectl's built-in kustomize (kubectl 1.27+ embeds kustomize v5).
const KUSTOMIZE: readonly [string, ...string[]] = findTool('kustomize') !== undefined ? ['kustomize', 'build'] : ['kubectl', 'kustomize'];
const SERVICES = ['splitter', 'transport', 'journal-writer', 'checkpoint-scheduler', 'recovery-orchestrator'] as const;

interface ComposeService {
  readonly image?: string;
  readonly command?: readonly string[];
  readonly environment?: Record<string, string>;
  readonly volumes?: readonly string[];
  readonly depends_on?: Record<string, { readonly condition: string }>;
}
interface ComposeFile {
  readonly services: Record<string, ComposeService>;
  readonly volumes: Record<string, unknown>;
}

interface Container {
  readonly name: string;
  readonly image: string;
  readonly args?: readonly string[];
  readonly ports?: readonly { readonly name?: string; readonly containerPort: number }[];
  readonly env?: readonly {
    readonly name: string;
    readonly value?: string;
    readonly valueFrom?: { readonly secretKeyRef?: { name: string; key: string }; readonly configMapKeyRef?: { name: string; key: string } };
  }[];
  readonly envFrom?: readonly { readonly configMapRef?: { name: string }; readonly secretRef?: { name: string } }[];
  readonly volumeMounts?: readonly { readonly name: string; readonly mountPath: string; readonly readOnly?: boolean }[];
  readonly readinessProbe?: { readonly httpGet?: { path: string; port: string | number } };
  readonly livenessProbe?: { readonly httpGet?: { path: string; port: string | number } };
  readonly resources?: { readonly requests?: Record<string, string>; readonly limits?: Record<string, string> };
}
interface Workload extends KubernetesObject {
  readonly spec: {
    readonly template: { readonly spec: { readonly containers: readonly Container[]; readonly volumes?: readonly { name: string }[] } };
    readonly volumeClaimTemplates?: readonly { readonly metadata: { readonly name: string } }[];
  };
}

/** docker-compose.yml as Compose reads it: YAML with merge keys (`<<: *anchor`) resolved. */
function readCompose(text = readFileSync(COMPOSE_FILE, 'utf8')): ComposeFile {
  return parse(text, { merge: true }) as ComposeFile;
}

/** The Compose Specification's JSON schema (vendored), which Docker Compose v2 validates files against. */
function composeSpecValidator(): (doc: unknown) => string[] {
  const { $schema: _draft, ...schema } = JSON.parse(readFileSync(join(__dirname, 'compose-spec', 'compose-spec.json'), 'utf8')) as Record<string, unknown>;
  // Formats (durations, ports) are Compose's own; the structure (no unknown keys, types) is what is checked.
  const ajv = new Ajv({ allErrors: true, strictSchema: true, strictTypes: false, strictTuples: false, strictRequired: false, validateFormats: false });
  const validate = ajv.compile(schema);
  return (doc) =>
    validate(doc) ? [] : (validate.errors ?? []).map((e) => `${e.instancePath} ${e.message ?? e.keyword} ${JSON.stringify(e.params)}`);
}

/** What a process started with this environment would do with it: load its configuration, or name what is wrong. */
function configProblems(env: Record<string, string>): string[] {
  const unknown = Object.keys(env).filter((name) => name.startsWith('CDP_') && !CONFIG_VARIABLES.includes(name));
  try {
    loadConfig(env);
    return unknown.map((name) => `${name} is not a configuration variable`);
  } catch (err) {
    return [...unknown.map((name) => `${name} is not a configuration variable`), err instanceof Error ? err.message : String(err)];
  }
}

async function render(overlay: string): Promise<unknown[]> {
  const [tool, ...args] = KUSTOMIZE;
  const { stdout } = await runToolOk(tool, [...args, overlay]);
  return parseYamlStream(stdout);
}

function workloads(objects: readonly unknown[]): Workload[] {
  return (objects as KubernetesObject[]).filter((o) => ['Deployment', 'StatefulSet'].includes(o.kind)) as Workload[];
}

/** A container's environment as the kubelet would assemble it from ConfigMaps, Secrets and literals. */
function containerEnv(container: Container, namespace: string | undefined, objects: readonly unknown[]): Record<string, string> {
  const find = (kind: string, name: string): Record<string, string> => {
    const found = (objects as (KubernetesObject & { data?: Record<string, string> })[]).find(
      (o) => o.kind === kind && o.metadata.name === name && o.metadata.namespace === namespace,
    );
    if (found === undefined) {
      throw new Error(`container ${container.name} refers to ${kind} ${String(namespace)}/${name}, which the overlay does not define`);
    }
    const data = found.data ?? {};
    return kind === 'Secret' ? Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')])) : data;
  };
  const env: Record<string, string> = {};
  for (const source of container.envFrom ?? []) {
    Object.assign(env, source.configMapRef ? find('ConfigMap', source.configMapRef.name) : {});
    Object.assign(env, source.secretRef ? find('Secret', source.secretRef.name) : {});
  }
  for (const variable of container.env ?? []) {
    const secret = variable.valueFrom?.secretKeyRef;
    const config = variable.valueFrom?.configMapKeyRef;
    const value = secret ? find('Secret', secret.name)[secret.key] : config ? find('ConfigMap', config.name)[config.key] : variable.value;
    if (value === undefined) {
      throw new Error(`container ${container.name}: ${variable.name} refers to a key that does not exist`);
    }
    env[variable.name] = value;
  }
  return env;
}

describe('docker-compose.yml', () => {
  itWithTools(['docker-compose'], 'is valid for docker-compose 1.29 (Debian 12), `config -q`', async () => {
    const result = await runTool('docker-compose', ['-f', COMPOSE_FILE, 'config', '-q']);
    expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
  });

  it('is valid against the Compose Specification schema that Docker Compose v2 reads', () => {
    expect(composeSpecValidator()(readCompose())).toEqual([]);
  });

  itWithTools(['docker-compose'], 'is rejected by both checks when it is broken', async () => {
    const dir = await tempDir('compose-broken');
    try {
      const original = readFileSync(COMPOSE_FILE, 'utf8');
      const broken = original.replace('    depends_on: *after-infrastructure', '    dependson: *after-infrastructure');
      expect(broken).not.toEqual(original);
      const file = join(dir.path, 'docker-compose.yml');
      await writeFile(file, broken);
      const result = await runTool('docker-compose', ['-f', file, '--project-directory', ROOT, 'config', '-q']);
      expect(result.code).not.toBe(0);
      expect(result.stderr).toContain('dependson');
      expect(composeSpecValidator()(readCompose(broken)).join('\n')).toContain('dependson');
    } finally {
      await dir.cleanup();
    }
  });

  it('runs the five services over Kafka and PostgreSQL, each with its own data volume, sharing the journal', () => {
    const compose = readCompose();
    expect(Object.keys(compose.services).sort()).toEqual([...SERVICES, 'demo-workload', 'kafka', 'postgres'].sort());
    expect(compose.services['kafka']?.image).toMatch(/^apache\/kafka:\d+\.\d+\.\d+$/);
    expect(compose.services['postgres']?.image).toMatch(/^postgres:\d+\.\d+-bookworm$/);

    const dataVolumes = new Set<string>();
    for (const name of SERVICES) {
      const service = compose.services[name]!;
      const entry = service.command?.[0] ?? '';
      expect(existsSync(join(ROOT, entry)) ? entry : `${name}: missing entry point ${entry}`).toBe(`apps/${name}/src/main.ts`);
      expect(configProblems(service.environment ?? {})).toEqual([]);
      expect(service.environment?.['CDP_BUS']).toBe('kafka');
      expect(service.depends_on).toEqual({ kafka: { condition: 'service_healthy' }, postgres: { condition: 'service_healthy' } });
      const data = (service.volumes ?? []).find((v) => v.endsWith(':/var/lib/continuum/data'));
      expect(data).toBeDefined();
      dataVolumes.add(data!.split(':')[0]!);
    }
    // A data directory belongs to one process at a time.
    expect(dataVolumes.size).toBe(SERVICES.length);

    const writer = compose.services['journal-writer']!;
    const orchestrator = compose.services['recovery-orchestrator']!;
    const journalDir = writer.environment?.['CDP_JOURNAL_DIR'];
    expect(orchestrator.environment?.['CDP_JOURNAL_DIR']).toBe(journalDir);
    expect(writer.volumes).toContain(`journal:${journalDir}`);
    expect(orchestrator.volumes).toContain(`journal:${journalDir}:ro`);
    expect(Object.keys(compose.volumes)).toContain('journal');
    expect(compose.services['demo-workload']?.command).toEqual(['deploy/demo-workload.ts']);
  });
});

describe('k8s/ (kustomize)', () => {
  const overlays = readdirSync(OVERLAYS).sort();

  it('has the DR lab overlays', () => {
    expect(overlays).toEqual(['dr-lab', 'protected-site', 'recovery-site']);
  });

  itWithTools([KUSTOMIZE[0]], 'renders every overlay into objects that all validate against the strict Kubernetes schemas', async () => {
    const validator = new ManifestValidator();
    for (const overlay of overlays) {
      const objects = await render(join(OVERLAYS, overlay));
      expect(objects.length).toBeGreaterThan(0);
      expect({ overlay, problems: validator.validate(objects) }).toEqual({ overlay, problems: [] });
    }
  });

  itWithTools([KUSTOMIZE[0]], 'the DR lab: a namespace per site, probes and resources everywhere, the journal shared in one pod', async () => {
    const objects = await render(join(OVERLAYS, 'dr-lab'));
    const all = objects as KubernetesObject[];
    expect(all.filter((o) => o.kind === 'Namespace').map((o) => o.metadata.name).sort()).toEqual(['continuum-protected', 'continuum-recovery']);
    const site = (name: string): string | undefined => all.find((o) => o.metadata.name === name && o.kind !== 'Service')?.metadata.namespace;
    expect(site('splitter')).toBe('continuum-protected');
    expect(['kafka', 'postgres', 'transport', 'checkpoint-scheduler', 'recovery'].map(site)).toEqual(Array(5).fill('continuum-recovery'));

    const started = new Set<string>();
    for (const workload of workloads(objects)) {
      for (const container of workload.spec.template.spec.containers) {
        const where = `${workload.metadata.name}/${container.name}`;
        expect({ where, requests: Object.keys(container.resources?.requests ?? {}).sort() }).toEqual({ where, requests: ['cpu', 'memory'] });
        expect({ where, limits: Object.keys(container.resources?.limits ?? {}).sort() }).toEqual({ where, limits: ['cpu', 'memory'] });
        expect({ where, probes: [container.readinessProbe !== undefined, container.livenessProbe !== undefined] }).toEqual({ where, probes: [true, true] });
        if (container.image !== 'continuum:0.1.0') {
          continue;
        }
        const entry = container.args?.[0] ?? '';
        expect(existsSync(join(ROOT, entry)) ? entry : `missing ${entry}`).toMatch(/^apps\/[a-z-]+\/src\/main\.ts$/);
        started.add(entry.split('/')[1]!);
        const env = containerEnv(container, workload.metadata.namespace, objects);
        expect({ where, problems: configProblems(env) }).toEqual({ where, problems: [] });
        // The probes ask the port the process listens on.
        const port = String(env['CDP_HTTP_PORT'] ?? 8080);
        for (const probe of [container.readinessProbe, container.livenessProbe]) {
          const named = container.ports?.find((p) => p.name === probe?.httpGet?.port)?.containerPort;
          expect({ where, port: String(named ?? probe?.httpGet?.port) }).toEqual({ where, port });
        }
        expect(container.readinessProbe?.httpGet?.path).toBe('/api/health/ready');
        expect(container.livenessProbe?.httpGet?.path).toBe('/api/health/live');
      }
    }
    expect([...started].sort()).toEqual([...SERVICES].sort());

    const recovery = workloads(objects).find((w) => w.kind === 'StatefulSet' && w.metadata.name === 'recovery')!;
    const byName = new Map(recovery.spec.template.spec.containers.map((c) => [c.name, c]));
    const journalMount = (name: string) => byName.get(name)?.volumeMounts?.find((m) => m.name === 'journal');
    expect(recovery.spec.volumeClaimTemplates?.map((t) => t.metadata.name)).toContain('journal');
    expect(journalMount('journal-writer')).toEqual({ name: 'journal', mountPath: '/var/lib/continuum/journal' });
    expect(journalMount('recovery-orchestrator')).toEqual({ name: 'journal', mountPath: '/var/lib/continuum/journal', readOnly: true });
  });

  itWithTools([KUSTOMIZE[0]], 'rejects an overlay whose patch misspells a field or gives a wrong type', async () => {
    const dir: TempDir = await tempDir('k8s-broken');
    try {
      await writeFile(
        join(dir.path, 'kustomization.yaml'),
        [
          'apiVersion: kustomize.config.k8s.io/v1beta1',
          'kind: Kustomization',
          'resources:',
          // kustomize takes only relative paths to other kustomizations.
          `  - ${relative(dir.path, join(OVERLAYS, 'protected-site'))}`,
          'patches:',
          '  - target: {kind: StatefulSet, name: splitter}',
          '    patch: |-',
          '      - {op: add, path: /spec/template/spec/containers/0/readinessProbe/httpGet/prot, value: http}',
          '      - {op: replace, path: /spec/replicas, value: one}',
          '',
        ].join('\n'),
      );
      const problems = new ManifestValidator().validate(await render(dir.path));
      expect(problems).toEqual(
        expect.arrayContaining([
          { object: 'StatefulSet continuum-protected/splitter', message: '/spec/template/spec/containers/0/readinessProbe/httpGet must NOT have additional properties (prot)' },
          { object: 'StatefulSet continuum-protected/splitter', message: '/spec/replicas must be integer' },
        ]),
      );
    } finally {
      await dir.cleanup();
    }
  });

  it('the validator rejects unknown kinds, unknown fields, wrong types and missing required fields', () => {
    const validator = new ManifestValidator();
    expect(validator.kubernetesVersion).toBe('1.36');
    const deployment = {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'x', namespace: 'n' },
      spec: { selector: { matchLabels: { a: 'b' } }, template: { spec: { containers: [{ name: 'c', image: 'i' }] } } },
    };
    expect(validator.validate([deployment])).toEqual([]);
    expect(validator.validate([{ ...deployment, kind: 'Deploymnet' }])[0]?.message).toMatch(/^unknown kind apps\/v1\/Deploymnet/);
    expect(validator.validate([{ ...deployment, spec: { ...deployment.spec, replica: 2 } }])).toEqual([
      { object: 'Deployment n/x', message: '/spec must NOT have additional properties (replica)' },
    ]);
    expect(validator.validate([{ ...deployment, spec: { ...deployment.spec, template: { spec: { containers: [{ image: 'i', ports: [{ containerPort: '80' }] }] } } } }])).toEqual([
      { object: 'Deployment n/x', message: "/spec/template/spec/containers/0 must have required property 'name'" },
      { object: 'Deployment n/x', message: '/spec/template/spec/containers/0/ports/0/containerPort must be integer' },
    ]);
    expect(validator.validate([{ apiVersion: 'v1', kind: 'ConfigMap', metadata: {} }])[0]?.message).toBe('has no metadata.name');
    expect(() => parseYamlStream('a: [1\n')).toThrow(/invalid YAML/);
  });
});

describe('the image', () => {
  it('builds from files that exist and runs the health check and entry point it names', () => {
    const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
    const copied = [...dockerfile.matchAll(/^COPY (?!--from)(.+) \S+$/gm)].flatMap((m) => m[1]!.split(/\s+/));
    expect(copied.length).toBeGreaterThan(0);
    for (const source of copied) {
      expect(existsSync(join(ROOT, source)) ? source : `missing ${source}`).toBe(source);
    }
    expect(dockerfile).toMatch(/^ARG NODE_IMAGE=node:20\.\d+\.\d+-bookworm-slim$/m);
    expect(dockerfile).toMatch(/^USER node$/m);
    expect(dockerfile).toContain('HEALTHCHECK');
    // .dockerignore lets in exactly what the Dockerfile copies from deploy/ and tools/.
    const ignore = readFileSync(join(ROOT, '.dockerignore'), 'utf8');
    for (const source of copied.filter((s) => s.startsWith('deploy/') || s.startsWith('tools/'))) {
      expect(ignore).toContain(`!${source}`);
    }
  });

  it('health check: exit 0 when /api/health/ready answers 200, 1 on 503 or when nothing listens', async () => {
    let status = 503;
    const server = createServer((req, res) => {
      res.statusCode = req.url === '/api/health/ready' ? status : 404;
      res.end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    const check = async (p: number): Promise<number | null> =>
      (await runTool('env', [`CDP_HTTP_PORT=${p}`, process.execPath, join(__dirname, 'healthcheck.cjs')])).code;
    try {
      expect(await check(port)).toBe(1);
      status = 200;
      expect(await check(port)).toBe(0);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
    expect(await check(port)).toBe(1);
  });

  it('demo workload: creates the demo VPG, writes through the splitter and records its tagged checkpoints', async () => {
    const db = await createTestDatabase();
    const dataDir = await tempDir('demo-workload');
    const app = await startAllInOne({ CDP_DATA_DIR: dataDir.path, DATABASE_URL: db.url });
    try {
      // The all-in-one serves both APIs on one port.
      const run = (writes: number) =>
        runTool(
          'env',
          [`CDP_DEMO_ORCHESTRATOR_URL=${app.url}`, `CDP_DEMO_SPLITTER_URL=${app.url}`, `CDP_DEMO_WRITES=${writes}`, 'CDP_DEMO_WRITES_PER_SECOND=1000',
            process.execPath, '-r', join(ROOT, 'tools', 'register.cjs'), join(__dirname, 'demo-workload.ts')],
          60_000,
        );
      const first = await run(30);
      expect({ code: first.code, stderr: first.stderr }).toEqual({ code: 0, stderr: '' });
      expect(first.stdout).toContain('done: 30 writes');
      // A rerun finds the VPG it made instead of failing on a duplicate name.
      const second = await run(5);
      expect({ code: second.code, stderr: second.stderr }).toEqual({ code: 0, stderr: '' });

      const vpgs = (await (await fetch(`${app.url}/api/vpgs`)).json()) as { id: string; name: string }[];
      expect(vpgs.map((v) => v.name)).toEqual(['demo']);
      const checkpoints = (await (await fetch(`${app.url}/api/vpgs/${vpgs[0]!.id}/checkpoints`)).json()) as { name: string | null }[];
      expect(checkpoints.map((c) => c.name).filter((n) => n?.startsWith('demo-workload'))).toEqual(['demo-workload write 30', 'demo-workload write 5']);

      const bad = await runTool('env', ['CDP_DEMO_WRITES=0', 'CDP_DEMO_SPLITTER_URL=ftp://x', process.execPath, '-r', join(ROOT, 'tools', 'register.cjs'), join(__dirname, 'demo-workload.ts')]);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toMatch(/CDP_DEMO_WRITES[\s\S]*CDP_DEMO_SPLITTER_URL|CDP_DEMO_SPLITTER_URL[\s\S]*CDP_DEMO_WRITES/);
    } finally {
      await app.stop();
      await dataDir.cleanup();
      await db.drop();
    }
  }, 120_000);
});
