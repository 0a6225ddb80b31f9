/**
 * The container tier (`*.container-spec.ts`, jest.container.config.js) runs against real Kafka and
 * PostgreSQL in containers started through testcontainers. Its global setup asks testcontainers for a
 * container runtime once and leaves the answer here; where there is none (no Docker engine), every
 * container test is skipped with a message saying so. That is the one skip CI allows: a machine without
 * a Docker engine cannot run these tests, and the integration tier covers the same code against the
 * kcat mock cluster and an embedded PostgreSQL.
 */
export const CONTAINER_RUNTIME_VARIABLE = 'CDP_TEST_CONTAINER_RUNTIME';

/** What the global setup found: a runtime's description, or why there is none. */
export function containerRuntime(): { readonly available: true; readonly detail: string } | { readonly available: false; readonly reason: string } {
  const value = process.env[CONTAINER_RUNTIME_VARIABLE];
  if (value === undefined) {
    return { available: false, reason: 'the container tier runs through jest.container.config.js, whose global setup looks for a Docker engine' };
  }
  if (value.startsWith('available:')) return { available: true, detail: value.slice('available:'.length) };
  return { available: false, reason: value.replace(/^missing:/, '') };
}

/** `describe` when a container runtime exists; otherwise one skipped test whose name says a Docker engine is missing. */
export function describeWithContainers(name: string, body: () => void): void {
  const runtime = containerRuntime();
  if (runtime.available) {
    describe(name, body);
    return;
  }
  describe(name, () => {
    it.skip(`skipped: no Docker engine (container runtime) is available here: ${runtime.reason}`, () => undefined);
  });
}
