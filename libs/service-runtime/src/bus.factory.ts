import { Logger } from '@nestjs/common';
import { type Bus, InProcessBus, KafkaBus, type KafkaBusLogEntry } from '@cdp/bus';
import { type AppConfig } from '@cdp/config';
import { TOPICS } from '@cdp/contracts';

/**
 * The bus driver the configuration asks for (CDP_BUS). With Kafka, the project's topics are made to exist
 * before any service produces or subscribes, so that 'create' gives them CDP_BUS_PARTITIONS partitions
 * rather than whatever a broker's auto-creation would choose; a broker that cannot be reached fails the
 * start with kafkajs's retries exhausted, naming the brokers.
 */
export async function createBus(config: AppConfig, service: string): Promise<Bus> {
  const bus = config.bus;
  switch (bus.driver) {
    case 'in-process':
      // A long-running process must not keep every message it ever carried: retain only what a group
      // still needs. No service changes a message value after sending it or after receiving it (record
      // batches are forwarded and split into views, never written to), so values are handed over
      // rather than copied: one copy less of every replicated byte.
      return new InProcessBus({ defaultPartitions: config.busPartitions, retention: 'consumed', values: 'hand-over' });
    case 'kafka': {
      const logger = new Logger('kafka');
      const kafka = new KafkaBus({
        brokers: bus.brokers,
        clientId: bus.clientId ?? `continuum-${service}`,
        topicCreation: bus.topicCreation,
        ...(bus.replicationFactor === null ? {} : { replicationFactor: bus.replicationFactor }),
        producer: { idempotent: bus.idempotent, compression: bus.compression },
        consumer: {
          sessionTimeoutMs: bus.sessionTimeoutMs,
          // Kafka's advice: heartbeats at most a third of the session, so one lost heartbeat costs nothing.
          heartbeatIntervalMs: Math.min(3_000, Math.floor(bus.sessionTimeoutMs / 3)),
          maxWaitTimeInMs: bus.maxWaitMs,
        },
        logger: (entry) => log(logger, entry),
      });
      try {
        await kafka.ensureTopics(Object.values(TOPICS).map((topic) => ({ topic, partitions: config.busPartitions })));
      } catch (error) {
        await kafka.close();
        throw error;
      }
      return kafka;
    }
  }
}

function log(logger: Logger, entry: KafkaBusLogEntry): void {
  const line = `${entry.namespace}: ${entry.message}${Object.keys(entry.extra).length > 0 ? ` ${JSON.stringify(entry.extra)}` : ''}`;
  switch (entry.level) {
    case 'error':
      logger.error(line);
      return;
    case 'warn':
      logger.warn(line);
      return;
    case 'info':
    case 'debug':
      logger.debug?.(line);
      return;
  }
}

/** What the bus says about itself; a driver without a health check (in-process) is always reachable. */
export async function busHealth(bus: Bus): Promise<{ ready: boolean; detail: string }> {
  if (bus instanceof KafkaBus) {
    const health = await bus.health();
    return { ready: health.status === 'ok', detail: health.detail };
  }
  return { ready: true, detail: `${bus.driverName} bus` };
}
