import { expectServiceHealthEndpoints } from '@cdp/testing';

describe('recovery-orchestrator process', () => {
  it('starts on its own, answers its liveness and readiness checks, and stops cleanly on SIGTERM', async () => {
    await expectServiceHealthEndpoints('recovery-orchestrator', { database: true });
  });
});
