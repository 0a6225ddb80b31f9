// Runs TypeScript sources directly with swc (decorator metadata on, tsconfig path aliases resolved),
// so the quick start needs no build step. Used as `node -r ./tools/register.cjs <entry.ts>`.
process.env.SWC_NODE_PROJECT = require('node:path').join(__dirname, '..', 'tsconfig.json');
require('@swc-node/register');
