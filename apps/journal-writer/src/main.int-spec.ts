import { expectServiceHealthEndpoints } from '@cdp/testing';

describe('journal-writer process', () => {
  it('starts on its own, answers its liveness and readiness checks, and stops cleanly on SIGTERM', async () => {
    await expectServiceHealthEndpoints('journal-writer', { database: true });
  });
});
