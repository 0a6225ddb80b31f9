import {
  ServicePipeline,
  describeWithContainers,
  runKillAndRestartScenario,
  startKafkaContainer,
  startPostgresContainer,
  tempDir,
  type KafkaContainer,
  type PostgresContainer,
  type TempDir,
} from '@cdp/testing';

/**
 * The multi-process scenario (runKillAndRestartScenario) against Apache Kafka (KRaft) and PostgreSQL in
 * containers: topics created by the services with CreateTopics, the idempotent producer, a real group
 * coordinator. Runs where a Docker engine is available.
 */
const SEED = Number(process.env['PIPELINE_SEED'] ?? 20261126);

describeWithContainers('five services as separate processes over Apache Kafka and PostgreSQL in containers', () => {
  let kafka: KafkaContainer | undefined;
  let postgres: PostgresContainer | undefined;
  let dir: TempDir | undefined;
  let pipeline: ServicePipeline | undefined;

  beforeAll(async () => {
    [kafka, postgres, dir] = await Promise.all([startKafkaContainer(), startPostgresContainer(), tempDir('pipeline-')]);
    pipeline = new ServicePipeline({
      broker: kafka.bootstrap,
      databaseUrl: postgres.url,
      root: dir.path,
      env: {
        CDP_KAFKA_TOPIC_CREATION: 'create',
        CDP_KAFKA_REPLICATION_FACTOR: '1',
        // Kafka's smallest session timeout by default (group.min.session.timeout.ms): each kill costs about that much.
        CDP_KAFKA_SESSION_TIMEOUT_MS: '6000',
        CDP_KAFKA_MAX_WAIT_MS: '100',
      },
    });
  });

  afterAll(async () => {
    await pipeline?.stopAll();
    await Promise.all([kafka?.stop(), postgres?.stop()]);
    await dir?.cleanup();
  });

  it(`keeps every checkpoint bit-exact while each service is killed -9 and restarted (seed ${SEED})`, async () => {
    await runKillAndRestartScenario(pipeline!, { seed: SEED, databaseUrl: postgres!.url });
    const stopped = await pipeline!.stopAll();
    // Each one shut down gracefully on SIGTERM, exit code 0.
    expect([...stopped].filter(([, s]) => s.code !== 0).map(([service, s]) => `${service} (exit ${String(s.code)}):\n${s.output}`)).toEqual([]);
  });
});
