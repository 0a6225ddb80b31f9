export * from './bus';
export {
  type BatchErrorListener,
  InProcessBus,
  type InProcessBusOptions,
  type InProcessConsumerOptions,
} from './in-process/in-process.bus';
export {
  type BusHealth,
  KafkaBus,
  type KafkaBatchErrorListener,
  type KafkaBusLogEntry,
  type KafkaBusLogger,
  type KafkaBusLogLevel,
  type KafkaBusOptions,
  type KafkaConsumerOptions,
  type KafkaConsumerSettings,
  type KafkaProducerOptions,
} from './kafka/kafka.bus';
export { murmur2, partitionForKey, toPositive } from './murmur2';
export * from './bus.token';
// librdkafka's mock cluster for tests and benches of the Kafka driver where no real Kafka can run.
export { kcatAvailable, type MockCluster, startMockCluster } from './kafka/kcat-mock-cluster';
