/**
 * What the integration tier's global setup hands to its teardown. Jest runs both in its parent
 * process, outside the test sandboxes, so a global is the only channel between them.
 */
export interface TestPostgresState {
  stop(): Promise<void>;
}

const KEY = Symbol.for('cdp.testing.postgres');

type Holder = { [KEY]?: TestPostgresState };

export function setTestPostgresState(state: TestPostgresState | undefined): void {
  (globalThis as Holder)[KEY] = state;
}

export function takeTestPostgresState(): TestPostgresState | undefined {
  const holder = globalThis as Holder;
  const state = holder[KEY];
  holder[KEY] = undefined;
  return state;
}
