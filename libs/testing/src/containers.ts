import { createServer } from 'node:net';

/** Images of the container tier: the same as docker-compose.yml runs. */
export const KAFKA_IMAGE = 'apache/kafka:3.9.1';
export const POSTGRES_IMAGE = 'postgres:15.18-bookworm';

export interface RunningContainer {
  stop(): Promise<void>;
}

export interface KafkaContainer extends RunningContainer {
  /** host:port a client outside the container bootstraps from. */
  readonly bootstrap: string;
}

export interface PostgresContainer extends RunningContainer {
  /** Superuser URL of the server. */
  readonly url: string;
}

/**
 * One Kafka node in KRaft mode (broker and controller in one process) from the Apache Kafka project's
 * image. A Kafka client connects to whatever address the broker advertises, so the host port is chosen
 * before the container starts and advertised as such.
 */
export async function startKafkaContainer(): Promise<KafkaContainer> {
  const { GenericContainer, Wait, getContainerRuntimeClient } = await import('testcontainers');
  const host = (await getContainerRuntimeClient()).info.containerRuntime.host;
  const port = await freePort();
  const container = await new GenericContainer(KAFKA_IMAGE)
    .withExposedPorts({ container: 9092, host: port })
    .withEnvironment({
      KAFKA_NODE_ID: '1',
      KAFKA_PROCESS_ROLES: 'broker,controller',
      KAFKA_LISTENERS: 'PLAINTEXT://:9092,CONTROLLER://:9093',
      KAFKA_ADVERTISED_LISTENERS: `PLAINTEXT://${host}:${port}`,
      KAFKA_CONTROLLER_LISTENER_NAMES: 'CONTROLLER',
      KAFKA_LISTENER_SECURITY_PROTOCOL_MAP: 'CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT',
      KAFKA_CONTROLLER_QUORUM_VOTERS: '1@localhost:9093',
      KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR: '1',
      KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR: '1',
      KAFKA_TRANSACTION_STATE_LOG_MIN_ISR: '1',
      // A test's first group must not wait the default 3 s for more members.
      KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS: '0',
      KAFKA_NUM_PARTITIONS: '1',
    })
    .withWaitStrategy(Wait.forLogMessage(/Kafka Server started/))
    .withStartupTimeout(120_000)
    .start();
  return {
    bootstrap: `${host}:${port}`,
    stop: async () => {
      await container.stop();
    },
  };
}

export async function startPostgresContainer(): Promise<PostgresContainer> {
  const { GenericContainer, Wait } = await import('testcontainers');
  const password = 'continuum-test';
  const container = await new GenericContainer(POSTGRES_IMAGE)
    .withExposedPorts(5432)
    .withEnvironment({ POSTGRES_PASSWORD: password, POSTGRES_DB: 'continuum' })
    // The official image restarts the server once after initialising it: wait for the second start.
    .withWaitStrategy(Wait.forLogMessage(/database system is ready to accept connections/, 2))
    .withStartupTimeout(120_000)
    .start();
  return {
    url: `postgres://postgres:${password}@${container.getHost()}:${container.getMappedPort(5432)}/continuum`,
    stop: async () => {
      await container.stop();
    },
  };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address !== null ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}
