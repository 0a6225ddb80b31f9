import { describeWithContainers, startKafkaContainer, type KafkaContainer } from '@cdp/testing';
import { describeBusContract } from '../bus.contract';
import { KafkaBus } from './kafka.bus';

/**
 * The bus contract against a real Kafka (KRaft, one node): CreateTopics with the asked partition count,
 * the idempotent producer, real group coordination. Runs where a Docker engine is available.
 */
describeWithContainers('KafkaBus against Apache Kafka in a container', () => {
  let kafka: KafkaContainer;

  beforeAll(async () => {
    kafka = await startKafkaContainer();
  });

  afterAll(async () => {
    await kafka?.stop();
  });

  describeBusContract(
    'kafka (apache/kafka, KRaft)',
    () =>
      Promise.resolve(
        new KafkaBus({
          brokers: [kafka.bootstrap],
          topicCreation: 'create',
          replicationFactor: 1,
          consumer: { sessionTimeoutMs: 10_000, heartbeatIntervalMs: 500, maxWaitTimeInMs: 100, retryBackoff: { initialMs: 5, maxMs: 50 } },
          retry: { retries: 8, initialRetryTimeMs: 100, maxRetryTimeMs: 2_000 },
        }),
      ),
    { deadlineMs: 30_000 },
  );

  it('reports a healthy cluster', async () => {
    const bus = new KafkaBus({ brokers: [kafka.bootstrap] });
    try {
      expect(await bus.health()).toMatchObject({ status: 'ok' });
    } finally {
      await bus.close();
    }
  });
});
