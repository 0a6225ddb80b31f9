import { ConfigError, loadConfig } from './app.config';

describe('CDP_PROMOTION_INTERVAL_SECONDS', () => {
  it('defaults to 30 seconds', () => {
    expect(loadConfig({}).promotionIntervalSeconds).toBe(30);
  });

  it('accepts a whole number of seconds from 1', () => {
    expect(loadConfig({ CDP_PROMOTION_INTERVAL_SECONDS: '1' }).promotionIntervalSeconds).toBe(1);
    expect(loadConfig({ CDP_PROMOTION_INTERVAL_SECONDS: '600' }).promotionIntervalSeconds).toBe(600);
  });

  it.each(['0', '-5', '2.5', 'often'])('rejects %p', (value) => {
    expect(() => loadConfig({ CDP_PROMOTION_INTERVAL_SECONDS: value })).toThrow(ConfigError);
  });
});

describe('CDP_JOURNAL_COMMIT_INTERVAL_MS', () => {
  it('defaults to 25 ms', () => {
    expect(loadConfig({}).journalCommitIntervalMs).toBe(25);
  });

  it('accepts a whole number of milliseconds from 0 (no pacing) to 1000', () => {
    expect(loadConfig({ CDP_JOURNAL_COMMIT_INTERVAL_MS: '0' }).journalCommitIntervalMs).toBe(0);
    expect(loadConfig({ CDP_JOURNAL_COMMIT_INTERVAL_MS: '1000' }).journalCommitIntervalMs).toBe(1000);
  });

  it.each(['-1', '1001', '2.5', 'soon'])('rejects %p', (value) => {
    expect(() => loadConfig({ CDP_JOURNAL_COMMIT_INTERVAL_MS: value })).toThrow(ConfigError);
  });
});
