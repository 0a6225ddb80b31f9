import { expectServiceProcessLifecycle } from '@cdp/testing';

describe('transport process', () => {
  it('starts on its own, answers health, and stops cleanly on SIGTERM', async () => {
    await expectServiceProcessLifecycle('transport', { database: false });
  });
});
