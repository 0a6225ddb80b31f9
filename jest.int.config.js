const base = require('./tools/jest.base.cjs');

module.exports = {
  ...base,
  displayName: 'integration',
  // deploy/ holds the offline checks of the Dockerfile, docker-compose.yml and k8s/.
  roots: [...base.roots, '<rootDir>/deploy'],
  testMatch: ['**/*.int-spec.ts'],
  globalSetup: '<rootDir>/libs/testing/src/postgres.global-setup.ts',
  globalTeardown: '<rootDir>/libs/testing/src/postgres.global-teardown.ts',
  testTimeout: 120_000,
};
