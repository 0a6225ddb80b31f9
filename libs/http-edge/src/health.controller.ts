import { Controller, Get, HttpStatus, Inject, Optional, Res } from '@nestjs/common';
import { type Response } from 'express';

/** One thing a service needs before it can do its work: a database, a bus, its own start-up. */
export interface ReadinessCheck {
  readonly name: string;
  /** Never throws: a failure is `ready: false` with what went wrong. */
  check(): Promise<ReadinessResult>;
}

export interface ReadinessResult {
  readonly ready: boolean;
  readonly detail: string;
}

/** Injection token for the ReadinessCheck[] the composing module provides. */
export const READINESS_CHECKS = 'cdp:readiness-checks';

export interface ReadinessReport {
  readonly status: 'ready' | 'not-ready';
  /** Names of the checks that failed, so a probe's log line says what to look at. */
  readonly notReady: readonly string[];
  readonly checks: Readonly<Record<string, ReadinessResult>>;
}

/**
 * `GET /api/health` and `/api/health/live` answer as long as the process serves HTTP (liveness: restart
 * it if not). `GET /api/health/ready` runs every readiness check at once and answers 503, naming the
 * failed ones, until all pass (readiness: send it no traffic until then).
 */
@Controller('health')
export class HealthController {
  constructor(@Optional() @Inject(READINESS_CHECKS) private readonly checks: readonly ReadinessCheck[] = []) {}

  @Get()
  health(): { status: 'ok' } {
    return { status: 'ok' };
  }

  @Get('live')
  live(): { status: 'ok' } {
    return { status: 'ok' };
  }

  @Get('ready')
  async ready(@Res({ passthrough: true }) response: Response): Promise<ReadinessReport> {
    const report = await readiness(this.checks);
    response.status(report.status === 'ready' ? HttpStatus.OK : HttpStatus.SERVICE_UNAVAILABLE);
    return report;
  }
}

export async function readiness(checks: readonly ReadinessCheck[]): Promise<ReadinessReport> {
  const results = await Promise.all(
    checks.map(async (c): Promise<[string, ReadinessResult]> => {
      try {
        return [c.name, await c.check()];
      } catch (error) {
        return [c.name, { ready: false, detail: error instanceof Error ? error.message : String(error) }];
      }
    }),
  );
  const notReady = results.filter(([, r]) => !r.ready).map(([name]) => name);
  return { status: notReady.length === 0 ? 'ready' : 'not-ready', notReady, checks: Object.fromEntries(results) };
}
