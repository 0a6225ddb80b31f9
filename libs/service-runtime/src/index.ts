export * from './infrastructure.module';
export * from './run-service';
