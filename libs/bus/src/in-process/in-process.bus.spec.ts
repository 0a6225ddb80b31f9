import {
  type BatchContext,
  type BufferLease,
  BusError,
  type BusMessage,
  type ConsumedMessage,
  type MessageBatch,
} from '../bus';
import { Recorder, describeBusContract, keyForPartition, uniqueName, waitUntil } from '../bus.contract';
import { partitionForKey } from '../murmur2';
import { InProcessBus } from './in-process.bus';

describeBusContract('in-process', () => Promise.resolve(new InProcessBus()));

describe('InProcessBus', () => {
  const deadlineMs = 2_000;
  const waitFor = (what: string, predicate: () => boolean): Promise<void> => waitUntil(what, predicate, deadlineMs);
  const message = (key: string, value: string): BusMessage => ({ key, value: Buffer.from(value) });
  const text = (m: { value: Buffer }): string => m.value.toString('utf8');

  let bus: InProcessBus;
  afterEach(() => bus.close());

  it('is a non-durable driver named in-process', () => {
    bus = new InProcessBus();
    expect(bus.durable).toBe(false);
    expect(bus.driverName).toBe('in-process');
  });

  it('creates an unknown topic on first send, with the default partition count', async () => {
    bus = new InProcessBus({ defaultPartitions: 3 });
    const topic = uniqueName('auto');
    const keys = Array.from({ length: 30 }, (_, i) => `vpg-${i}`);
    await bus.createProducer().send(topic, keys.map((key) => message(key, key)));
    const high = [0, 1, 2].map((p) => Number(bus.partitionOffsets(topic, p).high));
    expect(high).toEqual([0, 1, 2].map((p) => keys.filter((key) => partitionForKey(key, 3) === p).length));
    expect(() => bus.partitionOffsets(topic, 3)).toThrow(BusError);
  });

  it('grows a topic that gains partitions, hands the new ones out, and never shrinks one', async () => {
    bus = new InProcessBus();
    const topic = uniqueName('grow');
    await bus.ensureTopics([{ topic, partitions: 2 }]);
    const recorder = new Recorder();
    await bus.createConsumer({ groupId: uniqueName('group'), topics: [topic] }).run(recorder.handler());

    await bus.ensureTopics([{ topic, partitions: 4 }]);
    await bus.ensureTopics([{ topic, partitions: 1 }]);
    await bus.createProducer().send(topic, [message(keyForPartition(3, 4), 'on the new partition')]);
    await waitFor('the message', () => recorder.messageCount() === 1);
    expect(recorder.messages()[0]?.partition).toBe(3);
    expect(bus.partitionOffsets(topic, 3)).toEqual({ low: '0', high: '1' });
  });

  it('rejects what Kafka would reject, with non-retriable BusErrors', async () => {
    bus = new InProcessBus();
    const nonRetriable = { name: 'BusError', retriable: false };
    await expect(bus.ensureTopics([{ topic: 'bad topic', partitions: 1 }])).rejects.toMatchObject(nonRetriable);
    await expect(bus.ensureTopics([{ topic: 'ok', partitions: 0 }])).rejects.toMatchObject(nonRetriable);
    await expect(bus.createProducer().send('', [message('k', 'v')])).rejects.toMatchObject(nonRetriable);
    expect(() => bus.createConsumer({ groupId: '', topics: ['t'] })).toThrow(BusError);
    expect(() => bus.createConsumer({ groupId: 'g', topics: [] })).toThrow(BusError);
    expect(() => bus.createConsumer({ groupId: 'g', topics: ['t'], maxBatchMessages: 0 })).toThrow(BusError);
    expect(() => new InProcessBus({ defaultPartitions: -1 })).toThrow(BusError);

    const twice = bus.createConsumer({ groupId: uniqueName('group'), topics: [uniqueName('t')] });
    await twice.run(() => Promise.resolve());
    await expect(twice.run(() => Promise.resolve())).rejects.toMatchObject(nonRetriable);

    const idle = bus.createConsumer({ groupId: uniqueName('group'), topics: [uniqueName('t')] });
    await bus.close();
    await expect(bus.createProducer().send('t', [message('k', 'v')])).rejects.toMatchObject(nonRetriable);
    await expect(bus.ensureTopics([{ topic: 't', partitions: 1 }])).rejects.toMatchObject(nonRetriable);
    expect(() => bus.createConsumer({ groupId: 'g', topics: ['t'] })).toThrow(BusError);
    await expect(idle.run(() => Promise.resolve())).rejects.toMatchObject(nonRetriable);
  });

  it("stores a copy of each message, so the producer's buffer may be reused", async () => {
    bus = new InProcessBus();
    const topic = uniqueName('copy');
    const value = Buffer.from('original');
    await bus.createProducer().send(topic, [{ key: 'k', value, headers: { h: '1' } }]);
    value.write('mutated!');
    const recorder = new Recorder();
    await bus.createConsumer({ groupId: uniqueName('group'), topics: [topic] }).run(recorder.handler());
    await waitFor('the message', () => recorder.messageCount() === 1);
    expect(recorder.messages().map(text)).toEqual(['original']);
    expect(recorder.messages()[0]?.headers).toEqual({ h: '1' });
  });

  it("with 'hand-over' values, delivers the sender's own buffer without copying it", async () => {
    bus = new InProcessBus({ values: 'hand-over' });
    const topic = uniqueName('hand-over');
    const value = Buffer.from('handed over');
    await bus.createProducer().send(topic, [{ key: 'k', value }]);
    const recorder = new Recorder();
    await bus.createConsumer({ groupId: uniqueName('group'), topics: [topic] }).run(recorder.handler());
    await waitFor('the message', () => recorder.messageCount() === 1);
    expect(recorder.messages()[0]?.value).toBe(value);
  });

  it("delivers to 'latest' the first message sent after run() resolves", async () => {
    bus = new InProcessBus();
    const topic = uniqueName('latest');
    await bus.createProducer().send(topic, [message('vpg', 'old')]);
    const recorder = new Recorder();
    await bus
      .createConsumer({ groupId: uniqueName('group'), topics: [topic], start: 'latest' })
      .run(recorder.handler());
    await bus.createProducer().send(topic, [message('vpg', 'new')]);
    await waitFor('the new message', () => recorder.messageCount() === 1);
    expect(recorder.messages().map(text)).toEqual(['new']);
  });

  it('reports rejected batches to both error listeners, logs nothing, and redelivers the same offsets', async () => {
    const busErrors: [unknown, MessageBatch][] = [];
    const consumerErrors: unknown[] = [];
    bus = new InProcessBus({
      retryBackoff: { initialMs: 1, maxMs: 4 },
      onError: (error, batch) => busErrors.push([error, batch]),
    });
    const spies = (['log', 'info', 'warn', 'error', 'debug'] as const).map((level) =>
      jest.spyOn(console, level).mockImplementation(() => undefined),
    );
    try {
      const topic = uniqueName('errors');
      await bus.createProducer().send(topic, ['a', 'b', 'c'].map((v) => message('vpg', v)));
      const failure = new Error('not yet');
      let calls = 0;
      const offsets: string[][] = [];
      await bus
        .createConsumer({
          groupId: uniqueName('group'),
          topics: [topic],
          onError: (error) => {
            consumerErrors.push(error);
            throw new Error('a broken listener changes nothing');
          },
        })
        .run((batch) => {
          offsets.push(batch.messages.map((m) => m.offset));
          calls++;
          // A handler that throws synchronously is treated like one that rejects.
          if (calls <= 3) throw failure;
          return Promise.resolve();
        });

      await waitFor('success after three failures', () => calls === 4);
      expect(offsets).toEqual(Array.from({ length: 4 }, () => ['0', '1', '2']));
      expect(consumerErrors).toEqual([failure, failure, failure]);
      expect(busErrors.map(([error]) => error)).toEqual([failure, failure, failure]);
      expect(busErrors[0]?.[1].messages.map(text)).toEqual(['a', 'b', 'c']);
      for (const spy of spies) expect(spy).not.toHaveBeenCalled();
    } finally {
      for (const spy of spies) spy.mockRestore();
    }
  });

  it('keeps consuming other partitions while one partition is stuck', async () => {
    bus = new InProcessBus();
    const topic = uniqueName('stuck');
    await bus.ensureTopics([{ topic, partitions: 2 }]);
    const [stuckKey, freeKey] = [keyForPartition(0, 2), keyForPartition(1, 2)];
    let release: () => void = () => undefined;
    const released = new Promise<void>((resolve) => (release = resolve));
    const recorder = new Recorder();
    await bus.createConsumer({ groupId: uniqueName('group'), topics: [topic], maxBatchMessages: 1 }).run(
      recorder.handler(async (batch) => {
        if (batch.partition === 0) await released;
      }),
    );
    const producer = bus.createProducer();
    try {
      await producer.send(topic, [message(stuckKey, 'stuck')]);
      for (let n = 0; n < 5; n++) await producer.send(topic, [message(freeKey, `free${n}`)]);
      await waitFor('the free partition', () => recorder.messageCount() === 5);
      expect(recorder.pending().map((d) => d.partition)).toEqual([0]);
    } finally {
      release();
    }
    await waitFor('the stuck partition', () => recorder.messageCount() === 6);
  });

  it('assigns partitions round-robin in join order and gives a leaver’s partitions to the rest', async () => {
    bus = new InProcessBus();
    const topic = uniqueName('assign');
    const partitions = 8;
    await bus.ensureTopics([{ topic, partitions }]);
    const groupId = uniqueName('group');
    const first = new Recorder();
    const second = new Recorder();
    await bus.createConsumer({ groupId, topics: [topic] }).run(first.handler());
    const leaver = bus.createConsumer({ groupId, topics: [topic] });
    await leaver.run(second.handler());
    const keys = Array.from({ length: partitions }, (_, p) => keyForPartition(p, partitions));
    const producer = bus.createProducer();
    await producer.send(topic, keys.map((key) => message(key, 'one')));
    await waitFor('a message on every partition', () => first.messageCount() + second.messageCount() === partitions);
    const partitionsOf = (recorder: Recorder): number[] =>
      [...new Set(recorder.messages().map((m) => m.partition))].sort((a, b) => a - b);
    expect(partitionsOf(first)).toEqual([0, 2, 4, 6]);
    expect(partitionsOf(second)).toEqual([1, 3, 5, 7]);

    await leaver.stop();
    await producer.send(topic, keys.map((key) => message(key, 'two')));
    await waitFor('the second round', () => first.messageCount() === 4 + partitions);
    expect(first.messages().filter((m) => text(m) === 'two')).toHaveLength(partitions);
    expect(second.messageCount()).toBe(4);
    for (let p = 0; p < partitions; p++) expect(bus.committedOffset(groupId, topic, p)).toBe('2');
  });

  it('hands a moved partition over only after the old owner’s batch settles, with no overlap', async () => {
    bus = new InProcessBus();
    const topic = uniqueName('handover');
    await bus.ensureTopics([{ topic, partitions: 2 }]);
    const movingKey = keyForPartition(1, 2);
    await bus.createProducer().send(topic, ['m0', 'm1', 'm2', 'm3'].map((v) => message(movingKey, v)));
    const groupId = uniqueName('group');
    let open: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (open = resolve));
    let held: BatchContext | undefined;
    const first = new Recorder();
    await bus.createConsumer({ groupId, topics: [topic], maxBatchMessages: 2 }).run(
      first.handler(async (_batch, context) => {
        held = context;
        // Finishes its batch even once revoked, which a handler may do.
        await gate;
      }),
    );
    const second = new Recorder();
    try {
      await waitFor('the first batch to be in progress', () => held !== undefined);
      await bus.createConsumer({ groupId, topics: [topic], maxBatchMessages: 2 }).run(second.handler());
      expect(held?.isActive()).toBe(false);
      // Let the new owner's worker run, so a missing hand-off would show as an early delivery.
      await new Promise<void>((resolve) => setImmediate(resolve));
      expect(second.deliveries).toEqual([]);
    } finally {
      open();
    }
    await waitFor('the new owner to finish', () => second.messageCount() === 2);
    expect(first.messages().map(text)).toEqual(['m0', 'm1']);
    expect(second.messages().map(text)).toEqual(['m2', 'm3']);
  });

  it('deletes records below an offset; a group behind the new start resumes at it', async () => {
    bus = new InProcessBus();
    const topic = uniqueName('trim');
    await bus.ensureTopics([{ topic, partitions: 1 }]);
    const producer = bus.createProducer();
    await producer.send(topic, Array.from({ length: 10 }, (_, n) => message('vpg', `m${n}`)));
    expect(bus.deleteRecordsBefore(topic, 0, '6')).toBe('6');
    expect(bus.deleteRecordsBefore(topic, 0, 2)).toBe('6');
    expect(bus.partitionOffsets(topic, 0)).toEqual({ low: '6', high: '10' });
    expect(() => bus.deleteRecordsBefore(topic, 0, -1)).toThrow(BusError);

    const recorder = new Recorder();
    await bus.createConsumer({ groupId: uniqueName('group'), topics: [topic] }).run(recorder.handler());
    await producer.send(topic, [message('vpg', 'm10')]);
    await waitFor('the rest', () => recorder.messageCount() === 5);
    expect(recorder.messages().map((m) => `${m.offset}:${text(m)}`)).toEqual([
      '6:m6',
      '7:m7',
      '8:m8',
      '9:m9',
      '10:m10',
    ]);
    expect(bus.deleteRecordsBefore(topic, 0, 100)).toBe('11');
    expect(bus.partitionOffsets(topic, 0)).toEqual({ low: '11', high: '11' });
  });

  it('delivers in the same turn of the event loop a message sent during or after a quick batch', async () => {
    bus = new InProcessBus();
    const topic = uniqueName('turn');
    const producer = bus.createProducer();
    const recorder = new Recorder();
    // The second message is sent while the first one's batch is being handled, as a reply that
    // crosses topics and comes back would be (a coordinated checkpoint's cut, sent while the members
    // are still finishing the prepare's batch).
    await bus
      .createConsumer({ groupId: uniqueName('group'), topics: [topic] })
      .run(recorder.handler((batch) => (batch.messages.some((m) => text(m) === 'request') ? producer.send(topic, [message('vpg', 'reply')]) : undefined)));
    await producer.send(topic, [message('vpg', 'warm-up')]);
    await waitFor('the warm-up message', () => recorder.messageCount() === 1);
    // From here on nothing lets the event loop turn: only promise callbacks run, a fixed number of
    // them (each hop is one), and delivery must fit in them. A consumer that yielded to the event loop
    // after each batch would still be waiting for its next turn.
    const hops = async (): Promise<void> => {
      for (let i = 0; i < 50; i++) {
        await Promise.resolve();
      }
    };
    await producer.send(topic, [message('vpg', 'request')]);
    await hops();
    expect(recorder.messages().map(text)).toEqual(['warm-up', 'request', 'reply']);
    await producer.send(topic, [message('vpg', 'after')]);
    await hops();
    expect(recorder.messages().map(text)).toEqual(['warm-up', 'request', 'reply', 'after']);
  });

  it('holds no timers or immediates while idle, and none after close(), even mid-backoff', async () => {
    const live = trackTimers();
    try {
      bus = new InProcessBus({ retryBackoff: { initialMs: 60_000, maxMs: 60_000 } });
      const topic = uniqueName('idle');
      const recorder = new Recorder();
      await bus.createConsumer({ groupId: uniqueName('group'), topics: [topic] }).run(recorder.handler());
      await bus.createProducer().send(topic, [message('vpg', 'hello')]);
      await waitFor('the message', () => recorder.messageCount() === 1);
      // The poll's own timer has fired by the time the predicate runs, so any live one is the bus's.
      await waitFor('the bus to go idle', () => live.size === 0);

      let failures = 0;
      const failing = bus.createConsumer({ groupId: uniqueName('group'), topics: [topic] });
      await failing.run(() => {
        failures++;
        return Promise.reject(new Error('always'));
      });
      await waitFor('a failure and its backoff timer', () => failures === 1 && live.size === 1);

      const started = Date.now();
      await bus.close();
      expect(Date.now() - started).toBeLessThan(1_000);
      expect(live.size).toBe(0);
      expect(failures).toBe(1);
    } finally {
      jest.restoreAllMocks();
    }
  });
});

/** Timers and immediates created from now on that have neither run nor been cleared. */
function trackTimers(): ReadonlySet<unknown> {
  const live = new Set<unknown>();
  const { setTimeout: realSetTimeout, clearTimeout: realClearTimeout, setImmediate: realSetImmediate } = global;
  jest.spyOn(global, 'setTimeout').mockImplementation(((callback: () => void, ms?: number) => {
    const handle = realSetTimeout(() => {
      live.delete(handle);
      callback();
    }, ms);
    live.add(handle);
    return handle;
  }) as unknown as typeof setTimeout);
  jest.spyOn(global, 'clearTimeout').mockImplementation((handle) => {
    live.delete(handle);
    realClearTimeout(handle);
  });
  jest.spyOn(global, 'setImmediate').mockImplementation(((callback: () => void) => {
    const handle = realSetImmediate(() => {
      live.delete(handle);
      callback();
    });
    live.add(handle);
    return handle;
  }) as unknown as typeof setImmediate);
  return live;
}

describe('InProcessBus retention', () => {
  const deadlineMs = 5_000;

  it("with 'consumed', drops what every subscribed group has committed, and nothing a group still needs", async () => {
    const bus = new InProcessBus({ defaultPartitions: 1, retention: 'consumed' });
    const topic = uniqueName('retained');
    const fast = new Recorder();
    await bus.createConsumer({ groupId: uniqueName('fast'), topics: [topic] }).run(fast.handler());
    let release: (() => void) | undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let slowSeen = 0;
    const slow = bus.createConsumer({ groupId: uniqueName('slow'), topics: [topic], maxBatchMessages: 5000 });
    await slow.run(async (batch) => {
      await gate;
      slowSeen += batch.messages.length;
    });
    const producer = bus.createProducer();
    const messages: BusMessage[] = Array.from({ length: 3000 }, (_, i) => ({ key: 'k', value: Buffer.from(String(i)) }));
    await producer.send(topic, messages);
    await waitUntil('the fast group to consume everything', () => fast.messageCount() === 3000, deadlineMs);
    // The slow group has committed nothing yet: everything is kept for it.
    expect(bus.partitionOffsets(topic, 0)).toEqual({ low: '0', high: '3000' });
    release?.();
    await waitUntil('the slow group to consume everything, and the partition to drop it', () => slowSeen === 3000 && bus.partitionOffsets(topic, 0).low === '3000', deadlineMs);
    await producer.send(topic, [{ key: 'k', value: Buffer.from('last') }]);
    await waitUntil('both groups past the last message, and it dropped', () => fast.messageCount() === 3001 && slowSeen === 3001 && bus.partitionOffsets(topic, 0).low === '3001', deadlineMs);
    await bus.close();
  });

  it("by default keeps everything, so a group that subscribes later still reads from the start", async () => {
    const bus = new InProcessBus({ defaultPartitions: 1 });
    const topic = uniqueName('kept');
    const first = new Recorder();
    await bus.createConsumer({ groupId: uniqueName('first'), topics: [topic] }).run(first.handler());
    await bus.createProducer().send(topic, Array.from({ length: 2000 }, (_, i) => ({ key: 'k', value: Buffer.from(String(i)) })));
    await waitUntil('the first group to consume everything', () => first.messageCount() === 2000, deadlineMs);
    expect(bus.partitionOffsets(topic, 0).low).toBe('0');
    await bus.close();
  });
});

/**
 * A lease that counts its holders as the splitter's payload ring does, starting with the sender's own
 * hold, and refuses what the ring refuses: a retain after the last release, a release too many. A
 * refusal is also noted, since one thrown inside a consumer's loop would not reach the test.
 */
class CountingLease implements BufferLease {
  holders = 1;
  retains = 0;
  /** How often the last holder let go: the owner may reuse the memory from then on. */
  freed = 0;
  readonly misuse: string[] = [];

  retain(): void {
    if (this.holders === 0) this.refuse('retained after the last release');
    this.holders++;
    this.retains++;
  }

  release(): void {
    if (this.holders === 0) this.refuse('released more often than retained');
    this.holders--;
    if (this.holders === 0) this.freed++;
  }

  /** Freed exactly once, and nothing refused: every retain was matched by exactly one release. */
  get settled(): boolean {
    return this.freed === 1 && this.holders === 0 && this.misuse.length === 0;
  }

  private refuse(what: string): never {
    this.misuse.push(what);
    throw new Error(what);
  }
}

/** A handler that keeps what it is given and waits until the test lets it finish. */
function gatedHandler(): {
  readonly seen: ConsumedMessage[];
  readonly open: () => void;
  readonly handler: (batch: MessageBatch) => Promise<void>;
} {
  let open: () => void = () => undefined;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const seen: ConsumedMessage[] = [];
  return {
    seen,
    open: () => open(),
    handler: async (batch) => {
      seen.push(...batch.messages);
      await gate;
    },
  };
}

describe('InProcessBus leases', () => {
  const deadlineMs = 2_000;
  const waitFor = (what: string, predicate: () => boolean): Promise<void> => waitUntil(what, predicate, deadlineMs);

  let bus: InProcessBus;
  afterEach(() => bus.close());

  /** Sends one leased value and ends the sender's own hold, as the owner does once send() settles. */
  async function sendLeased(topic: string, value: Buffer, key = 'k'): Promise<CountingLease> {
    const lease = new CountingLease();
    await bus.createProducer().send(topic, [{ key, value, lease }]);
    lease.release();
    return lease;
  }

  it("with 'hand-over' and 'consumed' retention, holds a value until every subscribed group has committed past it", async () => {
    bus = new InProcessBus({ defaultPartitions: 1, retention: 'consumed', values: 'hand-over' });
    const topic = uniqueName('leased');
    const value = Buffer.from('payload');
    const lease = await sendLeased(topic, value);
    expect([lease.retains, lease.holders]).toEqual([1, 1]);

    const slowGroup = uniqueName('slow');
    const slow = gatedHandler();
    await bus.createConsumer({ groupId: slowGroup, topics: [topic] }).run(slow.handler);
    const fastGroup = uniqueName('fast');
    await bus.createConsumer({ groupId: fastGroup, topics: [topic] }).run(new Recorder().handler());
    try {
      await waitFor(
        'the fast group to commit, the slow one to be handling it',
        () => bus.committedOffset(fastGroup, topic, 0) === '1' && slow.seen.length === 1,
      );
      expect(slow.seen[0]?.value).toBe(value);
      expect(slow.seen[0]?.lease).toBe(lease);
      expect(lease.freed).toBe(0);
    } finally {
      slow.open();
    }
    await waitFor('the slow group to commit', () => bus.committedOffset(slowGroup, topic, 0) === '1');
    expect(lease.settled).toBe(true);
    expect(bus.partitionOffsets(topic, 0).low).toBe('1');
    await bus.close();
    expect(lease.settled).toBe(true);
  });

  it("with 'consumed' retention, releases a value as soon as it is consumed, not when the log next compacts", async () => {
    bus = new InProcessBus({ defaultPartitions: 1, retention: 'consumed', values: 'hand-over' });
    const topic = uniqueName('eager');
    const leases: CountingLease[] = [];
    for (let n = 0; n < 10; n++) leases.push(await sendLeased(topic, Buffer.from(`m${n}`)));
    const gated = gatedHandler();
    let batches = 0;
    const groupId = uniqueName('group');
    await bus
      .createConsumer({ groupId, topics: [topic], maxBatchMessages: 1 })
      .run((batch) => (++batches === 1 ? Promise.resolve() : gated.handler(batch)));
    try {
      await waitFor('the second batch to be in progress', () => gated.seen.length === 1);
      // One of ten consumed: too little to compact the log for, but its owner gets it back now.
      expect(leases.map((l) => l.freed)).toEqual([1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
      expect(bus.partitionOffsets(topic, 0)).toEqual({ low: '1', high: '10' });
    } finally {
      gated.open();
    }
    await waitFor('everything consumed', () => bus.committedOffset(groupId, topic, 0) === '10');
    expect(leases.every((l) => l.settled)).toBe(true);
  });

  it("with 'hand-over' and 'all' retention, holds every value until close(), then releases each once", async () => {
    bus = new InProcessBus({ defaultPartitions: 1, values: 'hand-over' });
    const topic = uniqueName('kept');
    const leases = [await sendLeased(topic, Buffer.from('a')), await sendLeased(topic, Buffer.from('b'))];
    const recorder = new Recorder();
    const groupId = uniqueName('group');
    await bus.createConsumer({ groupId, topics: [topic] }).run(recorder.handler());
    await waitFor('both consumed', () => bus.committedOffset(groupId, topic, 0) === '2');
    expect(leases.map((l) => l.holders)).toEqual([1, 1]);
    expect(leases.map((l) => l.freed)).toEqual([0, 0]);
    await bus.close();
    expect(leases.map((l) => l.settled)).toEqual([true, true]);
  });

  it("with 'hand-over', deleteRecordsBefore releases what it drops, but not while a handler still has it", async () => {
    bus = new InProcessBus({ defaultPartitions: 1, values: 'hand-over' });
    const topic = uniqueName('trimmed');
    const leases = [
      await sendLeased(topic, Buffer.from('m0')),
      await sendLeased(topic, Buffer.from('m1')),
      await sendLeased(topic, Buffer.from('m2')),
    ];
    const gated = gatedHandler();
    const groupId = uniqueName('group');
    await bus.createConsumer({ groupId, topics: [topic], maxBatchMessages: 1 }).run(gated.handler);
    try {
      await waitFor('the first batch to be in progress', () => gated.seen.length === 1);
      expect(bus.deleteRecordsBefore(topic, 0, 2)).toBe('2');
      // m1 was only stored; m0 is still in its handler's hands.
      expect(leases.map((l) => l.freed)).toEqual([0, 1, 0]);
    } finally {
      gated.open();
    }
    await waitFor('the consumer to resume past the trim', () => bus.committedOffset(groupId, topic, 0) === '3');
    expect(gated.seen.map((m) => m.value.toString())).toEqual(['m0', 'm2']);
    expect(leases.map((l) => l.freed)).toEqual([1, 1, 0]);
    await bus.close();
    expect(leases.map((l) => l.settled)).toEqual([true, true, true]);
  });

  it("with 'copy' values, never retains a lease and hands consumers a copy without it", async () => {
    bus = new InProcessBus({ defaultPartitions: 1, retention: 'consumed' });
    const topic = uniqueName('copied');
    const value = Buffer.from('payload');
    const lease = await sendLeased(topic, value);
    const recorder = new Recorder();
    await bus.createConsumer({ groupId: uniqueName('group'), topics: [topic] }).run(recorder.handler());
    await waitFor('the message', () => recorder.messageCount() === 1);
    const [received] = recorder.messages();
    expect(received?.value).not.toBe(value);
    expect(received?.value.equals(value)).toBe(true);
    expect(received?.lease).toBeUndefined();
    await bus.close();
    expect(lease.retains).toBe(0);
    expect(lease.settled).toBe(true);
  });

  it('retains no lease for a send it rejects', async () => {
    bus = new InProcessBus({ defaultPartitions: 1, values: 'hand-over' });
    const topic = uniqueName('rejected');
    const producer = bus.createProducer();
    const lease = new CountingLease();
    const good: BusMessage = { key: 'k', value: Buffer.from('good'), lease };
    const bad: BusMessage[] = [
      { key: 'k', value: 'not a buffer' as unknown as Buffer },
      { key: 7 as unknown as string, value: Buffer.from('bad key') },
      { key: 'k', value: Buffer.from('bad lease'), lease: {} as unknown as BufferLease },
    ];
    for (const message of bad) {
      await expect(producer.send(topic, [good, message])).rejects.toBeInstanceOf(BusError);
    }
    expect(lease.retains).toBe(0);
    expect(bus.partitionOffsets(topic, 0)).toEqual({ low: '0', high: '0' });
  });
});
