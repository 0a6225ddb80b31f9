export * from './bus';
export {
  type BatchErrorListener,
  InProcessBus,
  type InProcessBusOptions,
  type InProcessConsumerOptions,
} from './in-process/in-process.bus';
export { murmur2, partitionForKey, toPositive } from './murmur2';
export * from './bus.token';
