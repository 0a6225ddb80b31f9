import { CONTAINER_RUNTIME_VARIABLE } from './container-runtime';

/** Longest the search for a container runtime may take; without Docker testcontainers fails in milliseconds. */
const PROBE_TIMEOUT_MS = 10_000;

/**
 * Container tier: finds out once whether a container runtime (a Docker engine) can be reached, and
 * tells the test files through CONTAINER_RUNTIME_VARIABLE. Never fails the run for a missing engine.
 */
export default async function globalSetup(): Promise<void> {
  let state: string;
  try {
    // Loaded here, not at the top: the probe is the only reason this tier needs testcontainers at start.
    const { getContainerRuntimeClient } = await import('testcontainers');
    let timer: NodeJS.Timeout | undefined;
    const client = await Promise.race([
      getContainerRuntimeClient(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${PROBE_TIMEOUT_MS} ms`)), PROBE_TIMEOUT_MS);
      }),
    ]).finally(() => clearTimeout(timer));
    const info = client.info.containerRuntime;
    state = `available:${info.host} (${info.operatingSystem}, ${info.remoteSocketPath})`;
  } catch (error) {
    state = `missing:${error instanceof Error ? error.message : String(error)}`;
  }
  process.env[CONTAINER_RUNTIME_VARIABLE] = state;
  // eslint-disable-next-line no-console
  console.log(`\n[containers] ${state.startsWith('available:') ? `container runtime at ${state.slice(10)}` : `no Docker engine: ${state.slice(8)}; container tests are skipped`}`);
}
