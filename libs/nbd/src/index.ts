export * from './block-device';
export * from './memory-block-device';
export { type NbdLogger, transmissionFlags } from './nbd-connection';
export * from './nbd-server';
export * from './protocol';
export * from './nbd-tls';
export * from './nbd-uri';
