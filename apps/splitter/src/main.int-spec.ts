import { expectServiceProcessLifecycle } from '@cdp/testing';

describe('splitter process', () => {
  it('starts on its own, answers health, and stops cleanly on SIGTERM', async () => {
    await expectServiceProcessLifecycle('splitter', { database: false });
  });
});
