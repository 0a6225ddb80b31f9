import {
  type BatchContext,
  type BatchHandler,
  type Bus,
  type BusConsumer,
  type BusMessage,
  type ConsumedMessage,
  type ConsumerOptions,
  type MessageBatch,
} from './bus';
import { partitionForKey } from './murmur2';

/**
 * The behaviour every Bus driver must show, written once so the Kafka driver's integration tests run the
 * same cases as the in-process driver's unit tests. Tests wait for conditions with a deadline rather than
 * sleeping, so a slower driver only needs a longer deadline (and a longer Jest timeout).
 */
export interface BusContractOptions {
  /** Longest wait for any one condition, such as a delivery. Default 5 s. */
  readonly deadlineMs?: number;
  /** What the driver, or the broker behind it, cannot do as the in-process driver does. Default: none. */
  readonly capabilities?: BusCapabilities;
}

/**
 * Differences a driver may declare, each with its reason, so that the contract stays strict for every
 * driver that does not declare them.
 */
export interface BusCapabilities {
  /**
   * Every topic gets this many partitions, whatever ensureTopics asks for. librdkafka's mock cluster
   * (used to test the Kafka driver without a real Kafka) has no working CreateTopics and auto-creates
   * every topic with 4 partitions. Tests then route keys by the real count; what they check about order,
   * groups and commits is unchanged.
   */
  readonly fixedPartitionCount?: number;
}

export function describeBusContract(name: string, factory: () => Promise<Bus>, options: BusContractOptions = {}): void {
  const deadlineMs = options.deadlineMs ?? 5_000;
  const fixedPartitionCount = options.capabilities?.fixedPartitionCount;
  /** The partitions a topic has after ensureTopics asked for `requested`. */
  const partitionsOf = (requested: number): number => fixedPartitionCount ?? requested;
  const waitFor = (what: string, predicate: () => boolean): Promise<void> => waitUntil(what, predicate, deadlineMs);

  describe(`Bus contract: ${name}`, () => {
    let bus: Bus;
    let consumers: BusConsumer[] = [];

    beforeEach(async () => {
      bus = await factory();
      consumers = [];
    });

    afterEach(async () => {
      await Promise.all(consumers.map((consumer) => consumer.stop()));
      await bus.close();
    });

    function consumer(consumerOptions: ConsumerOptions): BusConsumer {
      const created = bus.createConsumer(consumerOptions);
      consumers.push(created);
      return created;
    }

    async function send(topic: string, messages: readonly BusMessage[]): Promise<void> {
      await bus.createProducer().send(topic, messages);
    }

    describe('partitioning and order', () => {
      it("routes each key to the partition Kafka's default partitioner picks, in order across many sends", async () => {
        const topic = uniqueName('order');
        await bus.ensureTopics([{ topic, partitions: 4 }]);
        await bus.ensureTopics([{ topic, partitions: 4 }]);
        const partitions = partitionsOf(4);
        const keys = Array.from({ length: 12 }, (_, i) => `vpg-${i}`);
        const rounds = 40;
        const producer = bus.createProducer();
        for (let round = 0; round < rounds; round++) {
          // Rotating the key order interleaves each partition's keys differently in every send.
          const shift = round % keys.length;
          const order = [...keys.slice(shift), ...keys.slice(0, shift)];
          await producer.send(topic, order.map((key) => message(key, `${key}#${round}`, { round: String(round) })));
        }

        const recorder = new Recorder();
        await consumer({ groupId: uniqueName('group'), topics: [topic], maxBatchMessages: 7 }).run(recorder.handler());
        await waitFor('every message', () => recorder.messageCount() >= keys.length * rounds);

        const received = recorder.messages();
        expect(received).toHaveLength(keys.length * rounds);
        expect(received.filter((m) => m.partition !== partitionForKey(m.key, partitions))).toEqual([]);
        expect(received.filter((m) => m.topic !== topic)).toEqual([]);
        for (const key of keys) {
          expect(received.filter((m) => m.key === key).map(text)).toEqual(
            Array.from({ length: rounds }, (_, round) => `${key}#${round}`),
          );
        }
        expect(received.filter((m) => m.headers?.['round'] !== text(m).split('#')[1])).toEqual([]);
        for (let partition = 0; partition < partitions; partition++) {
          const offsets = received.filter((m) => m.partition === partition).map((m) => Number(m.offset));
          expect(offsets).toEqual(range(0, offsets.length));
        }
      });
    });

    describe('consumer groups', () => {
      it('delivers every message to each of two groups', async () => {
        const topic = uniqueName('fanout');
        await bus.ensureTopics([{ topic, partitions: 8 }]);
        const batch = (from: number): BusMessage[] =>
          range(from, from + 100).map((n) => message(`vpg-${n % 20}`, `m${n}`));
        await send(topic, batch(0));

        const first = new Recorder();
        const second = new Recorder();
        await consumer({ groupId: uniqueName('group-a'), topics: [topic] }).run(first.handler());
        await consumer({ groupId: uniqueName('group-b'), topics: [topic] }).run(second.handler());
        await send(topic, batch(100));

        const expected = range(0, 200).map((n) => `m${n}`).sort();
        const slower = (): number => Math.min(first.messageCount(), second.messageCount());
        await waitFor('both groups to receive everything', () => slower() >= 200);
        expect(first.messages().map(text).sort()).toEqual(expected);
        expect(second.messages().map(text).sort()).toEqual(expected);
      });

      it('splits the partitions between the members of a group, delivering each message once', async () => {
        const topic = uniqueName('split');
        await bus.ensureTopics([{ topic, partitions: 8 }]);
        const partitions = partitionsOf(8);
        const keys = Array.from({ length: 64 }, (_, i) => `vpg-${i}`);
        expect(new Set(keys.map((key) => partitionForKey(key, partitions))).size).toBe(partitions);

        const groupId = uniqueName('group');
        const a = new Recorder();
        const b = new Recorder();
        await consumer({ groupId, topics: [topic], maxBatchMessages: 10 }).run(a.handler());
        await consumer({ groupId, topics: [topic], maxBatchMessages: 10 }).run(b.handler());
        const total = 400;
        await send(topic, range(0, total).map((n) => message(keys[n % keys.length] ?? 'vpg', `m${n}`)));

        await waitFor('every message', () => a.messageCount() + b.messageCount() >= total);
        const all = [...a.messages(), ...b.messages()];
        const ids = all.map((m) => `${m.partition}/${m.offset}`);
        expect(new Set(ids).size).toBe(ids.length);
        expect(all.map(text).sort()).toEqual(range(0, total).map((n) => `m${n}`).sort());
        const partitionsOfA = new Set(a.messages().map((m) => m.partition));
        const partitionsOfB = new Set(b.messages().map((m) => m.partition));
        expect(partitionsOfA.size).toBeGreaterThan(0);
        expect(partitionsOfB.size).toBeGreaterThan(0);
        expect([...partitionsOfA].filter((p) => partitionsOfB.has(p))).toEqual([]);
        expect(partitionsOfA.size + partitionsOfB.size).toBe(partitions);
      });

      it("moves a partition to a joining member, ending the old owner's batch, which is delivered again", async () => {
        const topic = uniqueName('rebalance');
        await bus.ensureTopics([{ topic, partitions: 2 }]);
        const keys = [keyForPartition(0, partitionsOf(2)), keyForPartition(1, partitionsOf(2))];
        await send(topic, keys.flatMap((key) => range(0, 3).map((n) => message(key, `${key}#${n}`))));

        const groupId = uniqueName('group');
        let released = false;
        const first = new Recorder();
        const revoked: MessageBatch[] = [];
        await consumer({ groupId, topics: [topic] }).run(
          first.handler(async (batch, context) => {
            await waitUntil('revocation or release', () => !context.isActive() || released, deadlineMs);
            if (!context.isActive()) {
              revoked.push(batch);
              throw new Error('partition revoked mid-batch');
            }
          }),
        );
        const second = new Recorder();
        try {
          await waitFor('the first member to hold a batch of each partition', () => first.pending().length === 2);
          await consumer({ groupId, topics: [topic] }).run(second.handler());
          await waitFor('a revoked batch', () => revoked.length > 0);
          await waitFor('the joining member to take over', () => second.messageCount() > 0);
        } finally {
          released = true;
        }

        const processed = (): ConsumedMessage[] => [...first.messages(), ...second.messages()];
        await waitFor('every message processed', () => new Set(processed().map(text)).size === 6);
        for (const batch of revoked) {
          for (const m of batch.messages) expect(processed().map(text)).toContain(text(m));
        }
      });
    });

    describe('failures and commits', () => {
      it('redelivers a rejected batch, and nothing after it in its partition first', async () => {
        const topic = uniqueName('retry');
        await bus.ensureTopics([{ topic, partitions: 1 }]);
        await send(topic, range(0, 10).map((n) => message('vpg', `m${n}`)));

        let failures = 0;
        const recorder = new Recorder();
        await consumer({ groupId: uniqueName('group'), topics: [topic], maxBatchMessages: 3 }).run(
          recorder.handler((batch) => {
            if (firstOffset(batch) > 0 && failures < 2) {
              failures++;
              throw new Error('transient');
            }
          }),
        );

        await waitFor('the last message processed', () => recorder.messages().some((m) => m.offset === '9'));
        const deliveries = recorder.deliveries;
        const failed = deliveries.findIndex((d) => d.outcome === 'failed');
        expect(failed).toBeGreaterThan(0);
        expect(deliveries[failed + 1]?.outcome).toBe('failed');
        expect(offsetsOf(deliveries[failed + 1])).toEqual(offsetsOf(deliveries[failed]));
        expect(offsetsOf(deliveries[failed + 2])).toEqual(offsetsOf(deliveries[failed]));
        let next = 0;
        for (const delivery of deliveries) {
          expect(firstOffset(delivery)).toBe(next);
          if (delivery.outcome === 'ok') next = firstOffset(delivery) + delivery.messages.length;
        }
        expect(recorder.messages().map((m) => Number(m.offset))).toEqual(range(0, 10));
      });

      it('commits only completed batches: a successor continues after the last one, missing nothing', async () => {
        const topic = uniqueName('commit');
        await bus.ensureTopics([{ topic, partitions: 1 }]);
        await send(topic, range(0, 12).map((n) => message('vpg', `m${n}`)));

        const groupId = uniqueName('group');
        let sawInactive = false;
        const first = new Recorder();
        const quitter = consumer({ groupId, topics: [topic], maxBatchMessages: 4 });
        await quitter.run(
          first.handler(async (batch, context) => {
            if (firstOffset(batch) !== 4) return;
            await waitUntil('the consumer to stop', () => !context.isActive(), deadlineMs);
            sawInactive = true;
            throw new Error('abandoned: the consumer is stopping');
          }),
        );
        await waitFor('the second batch to be in progress', () => first.pending().some((d) => firstOffset(d) === 4));
        await quitter.stop();
        expect(sawInactive).toBe(true);

        // 'latest' would skip everything, so receiving offset 4 shows the committed offset wins.
        const second = new Recorder();
        await consumer({ groupId, topics: [topic], start: 'latest', maxBatchMessages: 4 }).run(second.handler());
        await waitFor('the successor to finish', () => second.messages().some((m) => m.offset === '11'));
        expect(firstOffset(second.deliveries[0])).toBe(4);
        const processed = [...first.messages(), ...second.messages()].map((m) => Number(m.offset));
        expect([...new Set(processed)].sort((x, y) => x - y)).toEqual(range(0, 12));
      });

      it('stop() waits for the batch in progress and commits it when it succeeds', async () => {
        const topic = uniqueName('stop-commit');
        await bus.ensureTopics([{ topic, partitions: 1 }]);
        await send(topic, range(0, 12).map((n) => message('vpg', `m${n}`)));

        const groupId = uniqueName('group');
        let open: () => void = () => undefined;
        const gate = new Promise<void>((resolve) => (open = resolve));
        let heldContext: BatchContext | undefined;
        const first = new Recorder();
        const quitter = consumer({ groupId, topics: [topic], maxBatchMessages: 4 });
        await quitter.run(
          first.handler(async (batch, context) => {
            if (firstOffset(batch) !== 4) return;
            heldContext = context;
            await context.heartbeat();
            await gate;
          }),
        );
        let stopped = false;
        try {
          await waitFor('the second batch to be in progress', () => heldContext !== undefined);
          expect(heldContext?.isActive()).toBe(true);
          const stopping = quitter.stop().then(() => (stopped = true));
          await waitFor('the batch to learn the consumer is stopping', () => heldContext?.isActive() === false);
          expect(stopped).toBe(false);
          open();
          await stopping;
        } finally {
          open();
        }
        expect(first.deliveries.map((d) => d.outcome)).toEqual(['ok', 'ok']);

        const second = new Recorder();
        await consumer({ groupId, topics: [topic], maxBatchMessages: 4 }).run(second.handler());
        await waitFor('the successor to finish', () => second.messages().some((m) => m.offset === '11'));
        expect(second.messages().map((m) => Number(m.offset))).toEqual(range(8, 12));
      });
    });

    describe('start position', () => {
      it("starts a new group at 'earliest' at the beginning of every partition", async () => {
        const topic = uniqueName('earliest');
        await bus.ensureTopics([{ topic, partitions: 4 }]);
        await send(topic, range(0, 20).map((n) => message(`vpg-${n}`, `old${n}`)));
        const recorder = new Recorder();
        await consumer({ groupId: uniqueName('group'), topics: [topic], start: 'earliest' }).run(recorder.handler());
        await send(topic, [message('vpg-0', 'new')]);
        await waitFor('every message', () => recorder.messageCount() >= 21);
        expect(recorder.messages().map(text).sort()).toEqual([...range(0, 20).map((n) => `old${n}`), 'new'].sort());
      });

      it("starts a new group at 'latest' after the messages already sent", async () => {
        const topic = uniqueName('latest');
        await bus.ensureTopics([{ topic, partitions: 4 }]);
        const keys = Array.from({ length: 16 }, (_, i) => `vpg-${i}`);
        await send(topic, keys.map((key) => message(key, `old:${key}`)));
        const recorder = new Recorder();
        await consumer({ groupId: uniqueName('group'), topics: [topic], start: 'latest' }).run(recorder.handler());

        // A broker-backed driver may settle its start positions just after joining, so probe every key
        // until each has been seen; a per-partition order puts any old message before its probe.
        const seenKeys = (): Set<string> => new Set(recorder.messages().map((m) => m.key));
        const deadline = Date.now() + deadlineMs;
        for (let round = 0; seenKeys().size < keys.length; round++) {
          if (Date.now() > deadline) throw new Error('the probes were never all delivered');
          await send(topic, keys.map((key) => message(key, `new:${key}:${round}`)));
          await waitUntil('probes', () => seenKeys().size === keys.length, Math.min(deadlineMs, 200)).catch(
            () => undefined,
          );
        }
        expect(recorder.messages().filter((m) => text(m).startsWith('old:'))).toEqual([]);
      });

      it('resumes a group from its committed offsets, whatever start it asks for', async () => {
        const topic = uniqueName('resume');
        await bus.ensureTopics([{ topic, partitions: 2 }]);
        const keys = [keyForPartition(0, partitionsOf(2)), keyForPartition(1, partitionsOf(2))];
        await send(topic, keys.map((key) => message(key, 'first')));
        const groupId = uniqueName('group');
        const before = new Recorder();
        const early = consumer({ groupId, topics: [topic], start: 'earliest' });
        await early.run(before.handler());
        await waitFor('the first messages', () => before.messageCount() === 2);
        await early.stop();

        await send(topic, keys.map((key) => message(key, 'second')));
        const after = new Recorder();
        const late = consumer({ groupId, topics: [topic], start: 'latest' });
        await late.run(after.handler());
        await waitFor('the second messages', () => after.messageCount() === 2);
        await late.stop();

        await send(topic, keys.map((key) => message(key, 'third')));
        const last = new Recorder();
        await consumer({ groupId, topics: [topic], start: 'earliest' }).run(last.handler());
        await waitFor('the third messages', () => last.messageCount() === 2);

        expect(before.messages().map(text)).toEqual(['first', 'first']);
        expect(after.messages().map(text)).toEqual(['second', 'second']);
        expect(last.messages().map(text)).toEqual(['third', 'third']);
      });
    });

    describe('stopping and closing', () => {
      it('stop() ends deliveries, resolves when idle, and may be called again or before run()', async () => {
        const topic = uniqueName('stop');
        await bus.ensureTopics([{ topic, partitions: 2 }]);
        await consumer({ groupId: uniqueName('group'), topics: [topic] }).stop();

        const stopped = new Recorder();
        const quitter = consumer({ groupId: uniqueName('group'), topics: [topic] });
        await quitter.run(stopped.handler());
        await send(topic, [message('vpg', 'before')]);
        await waitFor('the message sent before stopping', () => stopped.messageCount() === 1);
        await quitter.stop();
        await quitter.stop();

        const witness = new Recorder();
        await consumer({ groupId: uniqueName('group'), topics: [topic], start: 'latest' }).run(witness.handler());
        await send(topic, [0, 1].map((p) => message(keyForPartition(p, partitionsOf(2)), 'after')));
        await waitFor('another group to receive the later messages', () => witness.messageCount() === 2);
        expect(stopped.messages().map(text)).toEqual(['before']);
      });

      it('close() stops the consumers the bus created', async () => {
        const topic = uniqueName('close');
        const recorder = new Recorder();
        const running = consumer({ groupId: uniqueName('group'), topics: [topic] });
        await running.run(recorder.handler());
        await send(topic, [message('vpg', 'm')]);
        await waitFor('the message', () => recorder.messageCount() === 1);

        await bus.close();
        await running.stop();
        await bus.close();
        await expect(bus.createProducer().send(topic, [message('vpg', 'late')])).rejects.toThrow();
      });
    });

    describe('volume', () => {
      it('delivers 20k messages over 8 partitions in bounded single-partition batches, in offset order', async () => {
        const topic = uniqueName('volume');
        const total = 20_000;
        const maxBatchMessages = 256;
        await bus.ensureTopics([{ topic, partitions: 8 }]);
        const chunk = (from: number): BusMessage[] =>
          range(from, Math.min(from + 1_000, total)).map((n) => message(`vpg-${n % 97}`, `m${n}`));
        for (let from = 0; from < total / 2; from += 1_000) await send(topic, chunk(from));

        const inFlight = new Map<number, number>();
        let mostInFlightPerPartition = 0;
        const recorder = new Recorder();
        await consumer({ groupId: uniqueName('group'), topics: [topic], maxBatchMessages }).run(
          recorder.handler(async (batch) => {
            const now = (inFlight.get(batch.partition) ?? 0) + 1;
            inFlight.set(batch.partition, now);
            mostInFlightPerPartition = Math.max(mostInFlightPerPartition, now);
            await new Promise<void>((resolve) => setImmediate(resolve));
            inFlight.set(batch.partition, now - 1);
          }),
        );
        for (let from = total / 2; from < total; from += 1_000) await send(topic, chunk(from));

        await waitFor('every message', () => recorder.messageCount() >= total);
        expect(recorder.messageCount()).toBe(total);
        expect(mostInFlightPerPartition).toBe(1);
        const sizes = recorder.deliveries.map((d) => d.messages.length);
        expect(Math.max(...sizes)).toBe(maxBatchMessages);
        expect(Math.min(...sizes)).toBeGreaterThan(0);
        const next = new Map<number, number>();
        const misplaced: string[] = [];
        for (const delivery of recorder.deliveries) {
          for (const m of delivery.messages) {
            const expected = next.get(delivery.partition) ?? 0;
            if (m.topic !== topic || m.partition !== delivery.partition || Number(m.offset) !== expected) {
              misplaced.push(`${m.topic}/${m.partition}/${m.offset} in a batch of partition ${delivery.partition}`);
            }
            next.set(delivery.partition, Number(m.offset) + 1);
          }
        }
        expect(misplaced).toEqual([]);
        expect(new Set(recorder.messages().map(text)).size).toBe(total);
      });
    });
  });
}

/** Polls until the predicate holds; rejects once the deadline passes. */
export async function waitUntil(what: string, predicate: () => boolean, deadlineMs: number): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${deadlineMs} ms waiting for ${what}`);
    await new Promise<void>((resolve) => setTimeout(resolve, 1));
  }
}

interface ReceivedBatch extends MessageBatch {
  outcome: 'pending' | 'ok' | 'failed';
}

/** Keeps every batch a handler was given and how the handler ended. */
export class Recorder {
  readonly deliveries: ReceivedBatch[] = [];

  handler(behaviour?: (batch: MessageBatch, context: BatchContext) => Promise<void> | void): BatchHandler {
    return async (batch, context) => {
      const delivery: ReceivedBatch = {
        topic: batch.topic,
        partition: batch.partition,
        messages: [...batch.messages],
        outcome: 'pending',
      };
      this.deliveries.push(delivery);
      try {
        await behaviour?.(batch, context);
        delivery.outcome = 'ok';
      } catch (error) {
        delivery.outcome = 'failed';
        throw error;
      }
    };
  }

  /** Messages of the batches whose handler resolved, in delivery order. */
  messages(): ConsumedMessage[] {
    return this.deliveries.filter((d) => d.outcome === 'ok').flatMap((d) => d.messages);
  }

  messageCount(): number {
    return this.deliveries.reduce((sum, d) => sum + (d.outcome === 'ok' ? d.messages.length : 0), 0);
  }

  pending(): ReceivedBatch[] {
    return this.deliveries.filter((d) => d.outcome === 'pending');
  }
}

let uniqueCounter = 0;

/** Topic and group names no other test (or earlier run against a shared broker) uses. */
export function uniqueName(prefix: string): string {
  uniqueCounter++;
  return `${prefix}-${Date.now().toString(36)}-${process.pid}-${uniqueCounter}`;
}

/** A key that the default partitioner sends to the given partition. */
export function keyForPartition(partition: number, partitions: number): string {
  if (partition < 0 || partition >= partitions) throw new RangeError(`no partition ${partition} of ${partitions}`);
  for (let i = 0; ; i++) {
    const key = `vpg-${i}`;
    if (partitionForKey(key, partitions) === partition) return key;
  }
}

function message(key: string, value: string, headers?: Record<string, string>): BusMessage {
  return headers === undefined ? { key, value: Buffer.from(value) } : { key, value: Buffer.from(value), headers };
}

function text(m: ConsumedMessage): string {
  return m.value.toString('utf8');
}

function range(from: number, to: number): number[] {
  return Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);
}

function firstOffset(batch: MessageBatch | undefined): number {
  const offset = batch?.messages[0]?.offset;
  if (offset === undefined) throw new Error('expected a non-empty batch');
  return Number(offset);
}

function offsetsOf(batch: MessageBatch | undefined): number[] {
  return batch?.messages.map((m) => Number(m.offset)) ?? [];
}
