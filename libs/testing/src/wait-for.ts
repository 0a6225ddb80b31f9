import { setTimeout as delay } from 'node:timers/promises';

export interface WaitForOptions {
  /** Give up after this long. */
  readonly timeoutMs: number;
  /** Pause between checks (default 20 ms). */
  readonly intervalMs?: number;
  /** Says what never happened; the error thrown at the deadline carries it. */
  readonly message: string;
}

/**
 * Polls until the predicate holds. Tests wait for conditions, never for time: a fixed sleep is
 * either too short on a slow machine or wasted on a fast one. An exception from the predicate ends
 * the wait at once.
 */
export async function waitFor(
  predicate: () => boolean | Promise<boolean>,
  { timeoutMs, intervalMs = 20, message }: WaitForOptions,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) {
      return;
    }
    if (Date.now() >= deadline) {
      throw new Error(`${message} (still not true after ${timeoutMs} ms)`);
    }
    await delay(Math.min(intervalMs, Math.max(1, deadline - Date.now())));
  }
}
