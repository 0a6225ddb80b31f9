export * from './database.error';
export * from './data-source';
export * from './embedded-postgres.server';
export { parsePostmasterPid, type PostmasterPid } from './postmaster-pid';
export { migrations } from './migrations';
