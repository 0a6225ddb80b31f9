import { kcatAvailable, type MockCluster, startMockCluster } from '@cdp/bus';
import { ServicePipeline, createTestDatabase, itWithTools, runKillAndRestartScenario, tempDir, type TempDir, type TestDatabase } from '@cdp/testing';

/**
 * The five services as five OS processes over one Kafka-protocol broker (librdkafka's mock cluster,
 * through kcat) and one PostgreSQL database; each of journal writer, transport, splitter and scheduler
 * killed with SIGKILL mid-workload and restarted (see runKillAndRestartScenario).
 */
const SEED = Number(process.env['PIPELINE_SEED'] ?? 20261126);

// The mock cluster cannot create topics (it auto-creates them with 4 partitions) nor serve the
// idempotent producer. Its group coordinator waits up to the session timeout for a member killed with
// SIGKILL, so a short session keeps each restart's rebalance to seconds.
const MOCK_BROKER_ENV = {
  CDP_KAFKA_TOPIC_CREATION: 'broker-auto-creates',
  CDP_KAFKA_IDEMPOTENT: 'false',
  CDP_KAFKA_SESSION_TIMEOUT_MS: '6000',
  CDP_KAFKA_MAX_WAIT_MS: '100',
};

describe('five services as separate processes over Kafka (kcat mock cluster)', () => {
  let cluster: MockCluster | undefined;
  let database: TestDatabase | undefined;
  let dir: TempDir | undefined;
  let pipeline: ServicePipeline | undefined;

  beforeAll(async () => {
    if (!kcatAvailable()) return;
    [cluster, database, dir] = await Promise.all([startMockCluster(), createTestDatabase(), tempDir('pipeline-')]);
    pipeline = new ServicePipeline({ broker: cluster.bootstrap, databaseUrl: database.url, root: dir.path, env: MOCK_BROKER_ENV });
  });

  afterAll(async () => {
    await pipeline?.stopAll();
    await cluster?.stop();
    await database?.drop();
    await dir?.cleanup();
  });

  itWithTools(['kcat'], `keeps every checkpoint bit-exact while each service is killed -9 and restarted (seed ${SEED})`, async () => {
    await runKillAndRestartScenario(pipeline!, { seed: SEED, databaseUrl: database!.url });
    const stopped = await pipeline!.stopAll();
    // Each one shut down gracefully on SIGTERM, exit code 0.
    expect([...stopped].filter(([, s]) => s.code !== 0).map(([service, s]) => `${service} (exit ${String(s.code)}):\n${s.output}`)).toEqual([]);
  });
});
