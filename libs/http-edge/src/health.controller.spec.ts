import { type ReadinessCheck, readiness } from './health.controller';

const check = (name: string, ready: boolean | Error): ReadinessCheck => ({
  name,
  check: () => (ready instanceof Error ? Promise.reject(ready) : Promise.resolve({ ready, detail: `${name} detail` })),
});

describe('readiness', () => {
  it('is ready when every check passes, and when there are none', async () => {
    expect(await readiness([check('bus', true), check('database', true)])).toEqual({
      status: 'ready',
      notReady: [],
      checks: { bus: { ready: true, detail: 'bus detail' }, database: { ready: true, detail: 'database detail' } },
    });
    expect((await readiness([])).status).toBe('ready');
  });

  it('names every check that failed, a thrown error included', async () => {
    const report = await readiness([check('service', true), check('bus', false), check('database', new Error('connection refused'))]);
    expect(report.status).toBe('not-ready');
    expect(report.notReady).toEqual(['bus', 'database']);
    expect(report.checks['database']).toEqual({ ready: false, detail: 'connection refused' });
  });
});
