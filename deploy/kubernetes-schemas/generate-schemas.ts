import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Turns a Kubernetes OpenAPI v2 document (swagger.json) into the strict JSON schemas that
 * deploy/manifest.validator.ts checks rendered manifests against, keeping only the kinds the manifests
 * use and the definitions those reach. Run from the repository root:
 *
 *   node -r ./tools/register.cjs deploy/kubernetes-schemas/generate-schemas.ts <swagger.json> <kubernetes version> [where it came from]
 *
 * "Strict" as kubeconform's strict schemas are: an object that lists its properties accepts no others,
 * so a misspelt field (`readinessProbe.httpget`) is an error instead of being silently dropped by the
 * API server. Descriptions and formats are left out: the first only make the file big, and the formats
 * (int32, int64, byte, date-time) are not ones a manifest in this repository could get wrong.
 */

/** The kinds the manifests under k8s/ may use; anything else fails validation as an unknown kind. */
export const KINDS = [
  { apiVersion: 'v1', kind: 'Namespace' },
  { apiVersion: 'v1', kind: 'ConfigMap' },
  { apiVersion: 'v1', kind: 'Secret' },
  { apiVersion: 'v1', kind: 'Service' },
  { apiVersion: 'v1', kind: 'PersistentVolumeClaim' },
  { apiVersion: 'apps/v1', kind: 'Deployment' },
  { apiVersion: 'apps/v1', kind: 'StatefulSet' },
  { apiVersion: 'batch/v1', kind: 'Job' },
  { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy' },
  { apiVersion: 'policy/v1', kind: 'PodDisruptionBudget' },
] as const;

export const SCHEMA_FILE = join(__dirname, 'kubernetes-strict.json');

type JsonSchema = { [key: string]: unknown };

interface GroupVersionKind {
  readonly group: string;
  readonly version: string;
  readonly kind: string;
}

interface SwaggerDefinition extends JsonSchema {
  readonly 'x-kubernetes-group-version-kind'?: readonly GroupVersionKind[];
}

export interface SchemaBundle {
  readonly source: string;
  readonly kubernetesVersion: string;
  /** "<apiVersion>/<kind>" to the definition that describes it. */
  readonly kinds: Record<string, string>;
  readonly definitions: Record<string, JsonSchema>;
}

const REF_PREFIX = '#/definitions/';

// Types whose JSON form the OpenAPI document only hints at with a format: YAML writes `port: 8080` and
// `cpu: 1` as numbers, and both are valid.
const SPECIAL: Record<string, JsonSchema> = {
  'io.k8s.apimachinery.pkg.util.intstr.IntOrString': { oneOf: [{ type: 'string' }, { type: 'integer' }] },
  'io.k8s.apimachinery.pkg.api.resource.Quantity': { oneOf: [{ type: 'string' }, { type: 'number' }] },
};

function strict(node: unknown, refs: Set<string>): unknown {
  if (Array.isArray(node)) {
    return node.map((item) => strict(item, refs));
  }
  if (node === null || typeof node !== 'object') {
    return node;
  }
  const source = node as JsonSchema;
  if (source['x-kubernetes-int-or-string'] === true) {
    return SPECIAL['io.k8s.apimachinery.pkg.util.intstr.IntOrString'];
  }
  const out: JsonSchema = {};
  for (const [key, value] of Object.entries(source)) {
    if (key === 'description' || key === 'format' || key.startsWith('x-kubernetes-')) {
      continue;
    }
    if (key === '$ref' && typeof value === 'string') {
      refs.add(value.slice(REF_PREFIX.length));
      out[key] = value;
    } else if (key === 'properties' && value !== null && typeof value === 'object') {
      out[key] = Object.fromEntries(Object.entries(value).map(([name, schema]) => [name, strict(schema, refs)]));
    } else {
      out[key] = strict(value, refs);
    }
  }
  if (out['properties'] !== undefined && out['additionalProperties'] === undefined && source['x-kubernetes-preserve-unknown-fields'] !== true) {
    out['additionalProperties'] = false;
  }
  return out;
}

export function generate(swagger: { definitions: Record<string, SwaggerDefinition> }, source: string, kubernetesVersion: string): SchemaBundle {
  const kinds: Record<string, string> = {};
  for (const wanted of KINDS) {
    const [group, version] = wanted.apiVersion.includes('/') ? wanted.apiVersion.split('/') : ['', wanted.apiVersion];
    const match = Object.entries(swagger.definitions).find(([, def]) =>
      (def['x-kubernetes-group-version-kind'] ?? []).some((gvk) => gvk.group === group && gvk.version === version && gvk.kind === wanted.kind),
    );
    if (match === undefined) {
      throw new Error(`${wanted.apiVersion} ${wanted.kind} is not in the OpenAPI document`);
    }
    kinds[`${wanted.apiVersion}/${wanted.kind}`] = match[0];
  }

  const definitions: Record<string, JsonSchema> = {};
  const pending = Object.values(kinds);
  for (let name = pending.pop(); name !== undefined; name = pending.pop()) {
    if (definitions[name] !== undefined) {
      continue;
    }
    const def = swagger.definitions[name];
    if (def === undefined) {
      throw new Error(`the OpenAPI document refers to ${name} but does not define it`);
    }
    const refs = new Set<string>();
    definitions[name] = SPECIAL[name] ?? (strict(def, refs) as JsonSchema);
    pending.push(...refs);
  }

  const sorted = Object.fromEntries(Object.entries(definitions).sort(([a], [b]) => a.localeCompare(b)));
  return { source, kubernetesVersion, kinds, definitions: sorted };
}

function main(): void {
  const [swaggerPath, kubernetesVersion, ...origin] = process.argv.slice(2);
  if (swaggerPath === undefined || kubernetesVersion === undefined || !/^\d+\.\d+(\.\d+)?$/.test(kubernetesVersion)) {
    process.stderr.write('usage: generate-schemas.ts <swagger.json> <kubernetes version, e.g. 1.36> [where it came from]\n');
    process.exit(2);
  }
  const swagger = JSON.parse(readFileSync(swaggerPath, 'utf8')) as { definitions?: Record<string, SwaggerDefinition> };
  if (swagger.definitions === undefined) {
    process.stderr.write(`${swaggerPath} has no "definitions": not an OpenAPI v2 document\n`);
    process.exit(2);
  }
  const bundle = generate(
    { definitions: swagger.definitions },
    origin.length > 0 ? origin.join(' ') : `the Kubernetes OpenAPI v2 document of release-${kubernetesVersion}`,
    kubernetesVersion,
  );
  writeFileSync(SCHEMA_FILE, `${JSON.stringify(bundle, null, 1)}\n`);
  process.stdout.write(`${Object.keys(bundle.kinds).length} kinds, ${Object.keys(bundle.definitions).length} definitions written to ${SCHEMA_FILE}\n`);
}

if (require.main === module) {
  main();
}
