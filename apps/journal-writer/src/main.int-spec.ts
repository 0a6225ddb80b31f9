import { expectServiceProcessLifecycle } from '@cdp/testing';

describe('journal-writer process', () => {
  it('starts on its own, answers health, and stops cleanly on SIGTERM', async () => {
    await expectServiceProcessLifecycle('journal-writer', { database: true });
  });
});
