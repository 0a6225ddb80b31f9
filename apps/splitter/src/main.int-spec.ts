import { expectServiceHealthEndpoints } from '@cdp/testing';

describe('splitter process', () => {
  it('starts on its own, answers its liveness and readiness checks, and stops cleanly on SIGTERM', async () => {
    await expectServiceHealthEndpoints('splitter', { database: false });
  });
});
