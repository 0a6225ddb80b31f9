import { readFileSync } from 'node:fs';
import Ajv, { type ValidateFunction } from 'ajv';
import { parseAllDocuments } from 'yaml';
import { SCHEMA_FILE, type SchemaBundle } from './kubernetes-schemas/generate-schemas';

/** One Kubernetes object as rendered by kustomize. */
export interface KubernetesObject {
  readonly apiVersion: string;
  readonly kind: string;
  readonly metadata: { readonly name: string; readonly namespace?: string; readonly labels?: Record<string, string> };
  readonly [field: string]: unknown;
}

export interface ManifestProblem {
  /** "<Kind> <namespace>/<name>", or the document's position when it has no usable identity. */
  readonly object: string;
  readonly message: string;
}

/**
 * Checks Kubernetes objects against the strict schemas vendored in deploy/kubernetes-schemas, offline:
 * an unknown kind, a misspelt or misplaced field, a wrong type or a missing required field is a problem.
 */
export class ManifestValidator {
  private readonly bundle: SchemaBundle;
  private readonly ajv: Ajv;
  private readonly compiled = new Map<string, ValidateFunction>();

  constructor(schemaFile = SCHEMA_FILE) {
    this.bundle = JSON.parse(readFileSync(schemaFile, 'utf8')) as SchemaBundle;
    this.ajv = new Ajv({ allErrors: true, strict: true });
    this.ajv.addSchema({ $id: 'kubernetes', definitions: this.bundle.definitions });
  }

  get kubernetesVersion(): string {
    return this.bundle.kubernetesVersion;
  }

  validate(objects: readonly unknown[]): ManifestProblem[] {
    return objects.flatMap((object, index) => this.validateOne(object, index));
  }

  private validateOne(object: unknown, index: number): ManifestProblem[] {
    if (object === null || typeof object !== 'object' || Array.isArray(object)) {
      return [{ object: `document ${index + 1}`, message: 'is not a mapping' }];
    }
    const { apiVersion, kind, metadata } = object as Partial<KubernetesObject>;
    const name = typeof metadata?.name === 'string' ? metadata.name : '(unnamed)';
    const where = `${String(kind)} ${metadata?.namespace ?? ''}${metadata?.namespace === undefined ? '' : '/'}${name}`;
    if (typeof metadata?.name !== 'string' || metadata.name === '') {
      return [{ object: `document ${index + 1} (${where})`, message: 'has no metadata.name' }];
    }
    const key = `${String(apiVersion)}/${String(kind)}`;
    const definition = this.bundle.kinds[key];
    if (definition === undefined) {
      return [{ object: where, message: `unknown kind ${key} (known: ${Object.keys(this.bundle.kinds).join(', ')})` }];
    }
    let validate = this.compiled.get(definition);
    if (validate === undefined) {
      validate = this.ajv.compile({ $ref: `kubernetes#/definitions/${definition}` });
      this.compiled.set(definition, validate);
    }
    if (validate(object)) {
      return [];
    }
    return (validate.errors ?? []).map((error) => {
      const extra = error.keyword === 'additionalProperties' ? ` (${String((error.params as { additionalProperty: string }).additionalProperty)})` : '';
      return { object: where, message: `${error.instancePath || '/'} ${error.message ?? error.keyword}${extra}` };
    });
  }
}

/** Parses a multi-document YAML stream (kustomize's output); a syntax error is thrown, not skipped. */
export function parseYamlStream(text: string): unknown[] {
  return parseAllDocuments(text).flatMap((doc) => {
    if (doc.errors.length > 0) {
      throw new Error(`invalid YAML: ${doc.errors.map((e) => e.message).join('; ')}`);
    }
    const value: unknown = doc.toJS();
    return value === null || value === undefined ? [] : [value];
  });
}
