export * from './infrastructure.module';
export * from './run-service';
export * from './quiet.logger';
export * from './data-dir.lock';
export * from './bus.factory';
export * from './readiness';
