// Settings common to the test tiers. Tiers are told apart by file suffix:
//   *.spec.ts      unit: no I/O beyond temp files, milliseconds each
//   *.int-spec.ts  integration: real Postgres, real bus driver, real processes and clients
const path = require('node:path');

// Every test run poisons payload memory the moment its last holder lets it go (see PayloadRing), so a
// holder that forgot to count itself reads garbage in tests instead of the right bytes by luck. Set
// here, in the process that starts the workers, so the workers and every process they start inherit it.
process.env.CDP_POISON_RELEASED_PAYLOADS ??= '1';
const tsconfig = require('../tsconfig.base.json');

const moduleNameMapper = {};
for (const [alias, [target]] of Object.entries(tsconfig.compilerOptions.paths)) {
  moduleNameMapper[`^${alias.replace('/', '\\/')}$`] = path.join('<rootDir>', target);
}

module.exports = {
  rootDir: path.join(__dirname, '..'),
  testEnvironment: 'node',
  transform: { '^.+\\.ts$': require('./swc.jest.cjs') },
  moduleNameMapper,
  roots: ['<rootDir>/apps', '<rootDir>/libs'],
  setupFiles: ['reflect-metadata'],
};
