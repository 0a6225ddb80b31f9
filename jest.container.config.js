const base = require('./tools/jest.base.cjs');

// Container tier: real Kafka and PostgreSQL through testcontainers, where a Docker engine runs. Without
// one, the global setup notices in milliseconds and every test here is skipped, saying so.
module.exports = {
  ...base,
  displayName: 'containers',
  testMatch: ['**/*.container-spec.ts'],
  globalSetup: '<rootDir>/libs/testing/src/container.global-setup.ts',
  testTimeout: 300_000,
};
