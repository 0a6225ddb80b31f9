import { expectServiceProcessLifecycle } from '@cdp/testing';

describe('recovery-orchestrator process', () => {
  it('starts on its own, answers health, and stops cleanly on SIGTERM', async () => {
    await expectServiceProcessLifecycle('recovery-orchestrator', { database: true });
  });
});
