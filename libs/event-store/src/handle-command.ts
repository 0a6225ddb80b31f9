import { type EntityManager } from 'typeorm';
import { ConcurrencyError } from './concurrency.error';
import { type EventStore } from './event-store';

/** An aggregate's behaviour as pure functions (see libs/domain/src/vpg.decider.ts). */
export interface Decider<C, E, S> {
  decide(command: C, state: S): readonly E[];
  evolve(state: S, event: E): S;
  readonly initialState: S;
}

export interface CommandResult<E, S> {
  /** What the command produced; empty when it changed nothing. */
  readonly events: readonly E[];
  /** State after the events. */
  readonly state: S;
  /** Stream version after the events. */
  readonly version: number;
}

/**
 * Writes read models in the append's transaction: the command's new events, the state after them and
 * the stream version after them.
 */
export type CommandProjection<E, S> = (
  em: EntityManager,
  events: readonly E[],
  state: S,
  version: number,
) => Promise<void>;

export interface HandleCommandOptions {
  /** Read-decide-append rounds before a ConcurrencyError is given up to the caller (default 3). */
  readonly maxAttempts?: number;
}

/**
 * Read the stream, fold it into state, decide, append at the version read. When another writer got
 * in between, the append fails with ConcurrencyError and the whole round runs again on fresh state,
 * so the decision is always made on what it will follow. Domain errors from decide() end it at once.
 */
export async function handleCommand<C, E extends { readonly type: string }, S>(
  store: EventStore,
  streamId: string,
  command: C,
  decider: Decider<C, E, S>,
  project?: CommandProjection<E, S>,
  options: HandleCommandOptions = {},
): Promise<CommandResult<E, S>> {
  const maxAttempts = options.maxAttempts ?? 3;
  for (let attempt = 1; ; attempt++) {
    const stream = await store.readStream<E>(streamId);
    const current = stream.events.reduce((state, event) => decider.evolve(state, event.data), decider.initialState);
    const events = decider.decide(command, current);
    if (events.length === 0) {
      return { events, state: current, version: stream.version };
    }
    const result: CommandResult<E, S> = {
      events,
      state: events.reduce((state, event) => decider.evolve(state, event), current),
      version: stream.version + events.length,
    };
    try {
      await store.append(
        streamId,
        stream.version,
        events,
        project && ((em) => project(em, result.events, result.state, result.version)),
      );
      return result;
    } catch (error) {
      if (!(error instanceof ConcurrencyError) || attempt >= maxAttempts) {
        throw error;
      }
    }
  }
}
