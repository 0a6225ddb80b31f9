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
