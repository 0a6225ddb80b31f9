import { type BeforeApplicationShutdown, Injectable } from '@nestjs/common';
import { type DataSource } from 'typeorm';
import { type Bus } from '@cdp/bus';
import { type ReadinessCheck } from '@cdp/http-edge';
import { busHealth } from './bus.factory';

/** Longest the database check waits for `SELECT 1`. */
const DATABASE_CHECK_TIMEOUT_MS = 2_000;

/**
 * Whether the service has started (every module bootstrapped, HTTP listening) and is not yet shutting
 * down: a draining process must stop receiving traffic before it stops serving it.
 */
@Injectable()
export class ServiceState implements BeforeApplicationShutdown {
  private state: 'starting' | 'started' | 'stopping' = 'starting';

  markStarted(): void {
    if (this.state === 'starting') this.state = 'started';
  }

  beforeApplicationShutdown(): void {
    this.state = 'stopping';
  }

  check(): ReadinessCheck {
    return {
      name: 'service',
      check: () => Promise.resolve({ ready: this.state === 'started', detail: this.state }),
    };
  }
}

export function busCheck(bus: Bus): ReadinessCheck {
  return { name: 'bus', check: () => busHealth(bus) };
}

export function databaseCheck(dataSource: DataSource): ReadinessCheck {
  return {
    name: 'database',
    check: async () => {
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          dataSource.query('SELECT 1'),
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error(`no answer to SELECT 1 within ${DATABASE_CHECK_TIMEOUT_MS} ms`)), DATABASE_CHECK_TIMEOUT_MS);
          }),
        ]);
        return { ready: true, detail: 'PostgreSQL answers' };
      } catch (error) {
        return { ready: false, detail: error instanceof Error ? error.message : String(error) };
      } finally {
        clearTimeout(timer);
      }
    },
  };
}
