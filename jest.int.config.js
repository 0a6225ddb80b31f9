const base = require('./tools/jest.base.cjs');

module.exports = {
  ...base,
  displayName: 'integration',
  testMatch: ['**/*.int-spec.ts'],
  globalSetup: '<rootDir>/libs/testing/src/postgres.global-setup.ts',
  globalTeardown: '<rootDir>/libs/testing/src/postgres.global-teardown.ts',
  testTimeout: 120_000,
};
