import { kcatAvailable, startMockCluster } from '@cdp/bus';
import { expectServiceHealthEndpoints, itWithTools, runServiceToExit, startService, tempDir, waitFor } from '@cdp/testing';

describe('transport process', () => {
  it('starts on its own, answers its liveness and readiness checks, and stops cleanly on SIGTERM', async () => {
    await expectServiceHealthEndpoints('transport', { database: false });
  });

  it('refuses to start on Kafka without brokers, naming the variable (exit code 2)', async () => {
    const dir = await tempDir('transport-');
    try {
      const { code, output } = await runServiceToExit('transport', { CDP_DATA_DIR: dir.path, CDP_BUS: 'kafka', CDP_KAFKA_COMPRESSION: 'lz4' });
      expect(code).toBe(2);
      expect(output).toContain('CDP_KAFKA_BROKERS: required when CDP_BUS=kafka');
      expect(output).toContain('CDP_KAFKA_COMPRESSION');
    } finally {
      await dir.cleanup();
    }
  });

  itWithTools(['kcat'], 'on Kafka: ready while the broker answers, 503 naming the bus once it is gone', async () => {
    if (!kcatAvailable()) return;
    const [cluster, dir] = await Promise.all([startMockCluster(), tempDir('transport-')]);
    try {
      const service = await startService('transport', {
        CDP_DATA_DIR: dir.path,
        CDP_BUS: 'kafka',
        CDP_KAFKA_BROKERS: cluster.bootstrap,
        CDP_KAFKA_TOPIC_CREATION: 'broker-auto-creates',
        CDP_KAFKA_IDEMPOTENT: 'false',
        CDP_KAFKA_SESSION_TIMEOUT_MS: '6000',
      });
      try {
        const ready = await fetch(`${service.url}/api/health/ready`);
        expect(ready.status).toBe(200);
        expect(((await ready.json()) as { checks: Record<string, { detail: string }> }).checks['bus']?.detail).toContain('1 broker(s)');
        await cluster.stop();
        let body: { status?: string; notReady?: string[] } = {};
        await waitFor(
          async () => {
            const response = await fetch(`${service.url}/api/health/ready`);
            body = (await response.json()) as typeof body;
            return response.status === 503;
          },
          { timeoutMs: 20_000, intervalMs: 200, message: 'readiness never reported the lost broker' },
        );
        expect(body).toMatchObject({ status: 'not-ready', notReady: ['bus'] });
        // Still alive: a lost broker is a reason to take it out of rotation, not to restart it.
        expect((await fetch(`${service.url}/api/health/live`)).status).toBe(200);
      } finally {
        expect(await service.stop()).toBe(0);
      }
    } finally {
      await cluster.stop();
      await dir.cleanup();
    }
  });
});
