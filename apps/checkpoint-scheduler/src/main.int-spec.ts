import { expectServiceProcessLifecycle } from '@cdp/testing';

describe('checkpoint-scheduler process', () => {
  it('starts on its own, answers health, and stops cleanly on SIGTERM', async () => {
    await expectServiceProcessLifecycle('checkpoint-scheduler', { database: true });
  });
});
