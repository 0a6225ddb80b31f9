import { type Bus, type BusConsumer, type BusMessage, type BusProducer, type ConsumerOptions, type TopicSpec } from '@cdp/bus';

export type Fault = 'deliver' | 'drop' | 'corrupt';

/** Decides the fate of the n-th message (0-based, counted per topic) sent to a topic. */
export type FaultPlan = (topic: string, index: number, message: BusMessage) => Fault;

/**
 * Wraps a bus and loses or damages chosen messages on their way in, while telling the producer they
 * were stored, as a broken link or a bad disk would. For testing that gaps and corruption are detected
 * and healed, never skipped.
 */
export class FaultInjectingBus implements Bus {
  readonly durable: boolean;
  readonly driverName: string;
  private readonly counts = new Map<string, number>();
  readonly injected: { topic: string; index: number; fault: Exclude<Fault, 'deliver'> }[] = [];

  constructor(
    private readonly inner: Bus,
    private readonly plan: FaultPlan,
  ) {
    this.durable = inner.durable;
    this.driverName = `${inner.driverName}+faults`;
  }

  ensureTopics(specs: readonly TopicSpec[]): Promise<void> {
    return this.inner.ensureTopics(specs);
  }

  createProducer(): BusProducer {
    const producer = this.inner.createProducer();
    return {
      send: async (topic, messages) => {
        const kept: BusMessage[] = [];
        for (const message of messages) {
          const index = this.counts.get(topic) ?? 0;
          this.counts.set(topic, index + 1);
          const fault = this.plan(topic, index, message);
          if (fault === 'drop') {
            this.injected.push({ topic, index, fault });
            continue;
          }
          if (fault === 'corrupt') {
            this.injected.push({ topic, index, fault });
            const damaged = Buffer.from(message.value);
            // The last byte is payload: lengths stay valid, only the checksum can tell.
            damaged.writeUInt8(damaged.readUInt8(damaged.length - 1) ^ 0xff, damaged.length - 1);
            // A copy: the original's lease (if any) is not this value's.
            const { lease: _lease, ...rest } = message;
            kept.push({ ...rest, value: damaged });
            continue;
          }
          kept.push(message);
        }
        if (kept.length > 0) {
          await producer.send(topic, kept);
        }
      },
    };
  }

  createConsumer(options: ConsumerOptions): BusConsumer {
    return this.inner.createConsumer(options);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
