export * from './record.codec';
export * from './record-batch.codec';
export * from './topics';
export * from './schemas';
export * from './events';
export * from './commands';
export * from './api.schemas';
