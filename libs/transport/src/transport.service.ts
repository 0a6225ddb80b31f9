import { Inject, Injectable, Logger, type OnApplicationBootstrap, type BeforeApplicationShutdown } from '@nestjs/common';
import { BUS, type Bus, type BusConsumer, type BusProducer, type MessageBatch } from '@cdp/bus';
import { TOPICS } from '@cdp/contracts';

export interface TransportStatus {
  readonly forwardedMessages: number;
  readonly forwardedBytes: number;
  readonly lastForwardedAt: string | null;
}

/**
 * Replication transport: moves record batches from the protected site's topic to the recovery site's,
 * batch for batch, keeping each VPG's key (and so its partition and order). A batch's offsets are
 * committed only after the recovery-site topic has acknowledged it, so a crash forwards some batches
 * twice and none never; the journal drops duplicates by seq. Compression, bandwidth limits,
 * encryption and link health belong here as they arrive.
 */
@Injectable()
export class TransportService implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger('transport');
  private consumer: BusConsumer | undefined;
  private readonly producer: BusProducer;
  private forwardedMessages = 0;
  private forwardedBytes = 0;
  private lastForwardedAt: Date | undefined;

  constructor(@Inject(BUS) private readonly bus: Bus) {
    this.producer = bus.createProducer();
  }

  async onApplicationBootstrap(): Promise<void> {
    this.consumer = this.bus.createConsumer({ groupId: 'transport', topics: [TOPICS.protectedWrites], start: 'earliest' });
    await this.consumer.run((batch) => this.forward(batch));
    this.logger.log(`forwarding ${TOPICS.protectedWrites} -> ${TOPICS.recoveryWrites}`);
  }

  async beforeApplicationShutdown(): Promise<void> {
    await this.consumer?.stop();
  }

  status(): TransportStatus {
    return {
      forwardedMessages: this.forwardedMessages,
      forwardedBytes: this.forwardedBytes,
      lastForwardedAt: this.lastForwardedAt?.toISOString() ?? null,
    };
  }

  private async forward(batch: MessageBatch): Promise<void> {
    // A value handed over by the in-process bus may live in its sender's reusable memory: its lease
    // goes with it, so that the recovery-site topic holds the memory as long as it keeps the value.
    await this.producer.send(
      TOPICS.recoveryWrites,
      batch.messages.map((m) =>
        m.lease === undefined ? { key: m.key, value: m.value } : { key: m.key, value: m.value, lease: m.lease },
      ),
    );
    this.forwardedMessages += batch.messages.length;
    this.forwardedBytes += batch.messages.reduce((sum, m) => sum + m.value.length, 0);
    this.lastForwardedAt = new Date();
  }
}
