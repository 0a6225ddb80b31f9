const base = require('./tools/jest.base.cjs');

module.exports = {
  ...base,
  displayName: 'unit',
  testMatch: ['**/*.spec.ts'],
  testTimeout: 10_000,
};
