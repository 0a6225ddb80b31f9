export * from './test-database';
export * from './wait-for';
export * from './temp-dir';
export { ADMIN_URL_VARIABLE, EXTERNAL_URL_VARIABLE } from './env';
export * from './reference-model';
export * from './http-client';
export * from './service.process';
export * from './service-lifecycle';
