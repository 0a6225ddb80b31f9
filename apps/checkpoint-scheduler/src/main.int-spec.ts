import { expectServiceHealthEndpoints } from '@cdp/testing';

describe('checkpoint-scheduler process', () => {
  it('starts on its own, answers its liveness and readiness checks, and stops cleanly on SIGTERM', async () => {
    await expectServiceHealthEndpoints('checkpoint-scheduler', { database: true });
  });
});
