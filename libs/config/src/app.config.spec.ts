import { ConfigError, loadConfig } from './app.config';

describe('loadConfig', () => {
  it('applies defaults when nothing is set', () => {
    const config = loadConfig({});
    expect(config.databaseUrl).toBeNull();
    expect(config.http).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(config.demo).toBe(false);
  });

  it('names every bad variable in one error', () => {
    let error: unknown;
    try {
      loadConfig({ CDP_HTTP_PORT: 'eighty', DATABASE_URL: 'mysql://x', CDP_DEMO: 'maybe' });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as ConfigError).message;
    for (const name of ['CDP_HTTP_PORT', 'DATABASE_URL', 'CDP_DEMO']) {
      expect(message).toContain(name);
    }
  });
});
