export * from './domain-error.filter';
export * from './zod.pipe';
export * from './http-app';
export * from './health.controller';
