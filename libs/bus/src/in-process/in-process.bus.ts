import {
  type BatchContext,
  type BatchHandler,
  type Bus,
  type BusConsumer,
  BusError,
  type BusMessage,
  type BusProducer,
  type ConsumedMessage,
  type ConsumerOptions,
  type MessageBatch,
  type TopicSpec,
} from '../bus';
import { partitionForKey } from '../murmur2';

/** Called when a handler rejects, before the batch is redelivered. Anything it throws is ignored. */
export type BatchErrorListener = (error: unknown, batch: MessageBatch) => void;

export interface InProcessBusOptions {
  /** Partitions of a topic created implicitly by a send or a subscription. Default 8. */
  readonly defaultPartitions?: number;
  /** Delay before a rejected batch is redelivered: doubles per failure from initialMs up to maxMs, with jitter. */
  readonly retryBackoff?: { readonly initialMs?: number; readonly maxMs?: number };
  readonly onError?: BatchErrorListener;
  /**
   * 'all' (default) keeps every message, as a topic with unlimited retention would. 'consumed' drops a
   * partition's messages once every group subscribed to its topic has committed past them (and none
   * while a subscribed group has not committed yet): what a long-running single-process deployment
   * needs, since nothing else would ever free them. A group that subscribes later with 'earliest'
   * then starts at the oldest message still kept.
   */
  readonly retention?: 'all' | 'consumed';
  /**
   * 'copy' (default) stores a copy of each value, as Kafka does by serialising at send: a producer may
   * reuse its buffer, and a consumer may change what it gets. 'hand-over' stores the sender's buffer
   * itself and hands it to every consumer, which saves a copy of every byte: only for a process whose
   * producers never touch a value after sending it and whose consumers never change one (the
   * services of the all-in-one). A handed-over value's lease (BusMessage.lease) is retained while the
   * bus stores the value and while a handler is given it, and released once for each: when the message
   * is dropped (consumed, deleteRecordsBefore, close()) and when the handler settles. 'copy' ignores
   * leases: the stored copy has none.
   */
  readonly values?: 'copy' | 'hand-over';
}

export interface InProcessConsumerOptions extends ConsumerOptions {
  /** Called as well as the bus-wide listener. */
  readonly onError?: BatchErrorListener;
}

const DEFAULT_PARTITIONS = 8;
const DEFAULT_MAX_BATCH_MESSAGES = 500;
const DEFAULT_RETRY_INITIAL_MS = 50;
const DEFAULT_RETRY_MAX_MS = 2_000;
/** How long a consumer delivers batch after batch before it lets timers and I/O run. */
const YIELD_AFTER_MS = 1;
// Kafka's own limits, enforced here so that names which would fail on a broker fail in tests too.
const TOPIC_NAME = /^[a-zA-Z0-9._-]{1,249}$/;

/**
 * Kafka's semantics (see bus.ts) inside one process, for tests and the single-node deployment. Nothing
 * survives the process. Idle consumers wait on promises that an append resolves, so an idle bus holds no
 * timers or handles and never keeps Node alive; the only timer is a pending redelivery backoff.
 */
export class InProcessBus implements Bus {
  readonly durable = false;
  readonly driverName = 'in-process';
  private readonly broker: Broker;

  constructor(options: InProcessBusOptions = {}) {
    this.broker = new Broker(options);
  }

  /**
   * Creates missing topics. An existing topic with fewer partitions grows, as Kafka's createPartitions
   * would (keys then map to partitions differently, as on Kafka); one with more is left as it is.
   */
  ensureTopics(specs: readonly TopicSpec[]): Promise<void> {
    return new Promise((resolve) => {
      this.broker.ensureTopics(specs);
      resolve();
    });
  }

  createProducer(): BusProducer {
    return {
      send: (topic, messages) =>
        new Promise((resolve) => {
          this.broker.send(topic, messages);
          resolve();
        }),
    };
  }

  createConsumer(options: InProcessConsumerOptions): BusConsumer {
    return this.broker.createConsumer(options);
  }

  /**
   * Stops every consumer (each after its batch in progress) and drops all messages, releasing the
   * leases of those stored. Idempotent.
   */
  close(): Promise<void> {
    return this.broker.close();
  }

  /**
   * Drops a partition's messages below `offset`, as Kafka's deleteRecords does; later offsets keep their
   * numbers. A group positioned before the new start resumes at it. Returns the new start offset. A
   * dropped message's lease is released at once, unless a handler is still given it: then once that
   * handler settles.
   */
  deleteRecordsBefore(topic: string, partition: number, offset: number | string): string {
    const before = Number(offset);
    if (!Number.isSafeInteger(before) || before < 0) throw new BusError(`invalid offset ${String(offset)}`, false);
    return String(this.broker.log(topic, partition).trimBefore(before));
  }

  /** The group's committed offset (the next offset it will consume), if it has committed one. */
  committedOffset(groupId: string, topic: string, partition: number): string | undefined {
    const committed = this.broker.committed(groupId, topic, partition);
    return committed === undefined ? undefined : String(committed);
  }

  /** First retained and next-to-be-written offsets of a partition, like Kafka's low and high watermarks. */
  partitionOffsets(topic: string, partition: number): { readonly low: string; readonly high: string } {
    const log = this.broker.log(topic, partition);
    return { low: String(log.start), high: String(log.end) };
  }
}

/** The bus's state and group coordination, kept off the public class. */
class Broker {
  readonly retryInitialMs: number;
  readonly retryMaxMs: number;
  readonly onError: BatchErrorListener | undefined;
  readonly retainConsumedOnly: boolean;
  private readonly defaultPartitions: number;
  private readonly topics = new Map<string, Topic>();
  private readonly groups = new Map<string, ConsumerGroup>();
  private readonly consumers = new Set<InProcessConsumer>();
  private closed = false;
  private closing: Promise<void> | undefined;
  readonly handOver: boolean;

  constructor(options: InProcessBusOptions) {
    this.defaultPartitions = checkPartitionCount(options.defaultPartitions ?? DEFAULT_PARTITIONS);
    this.retryInitialMs = Math.max(0, options.retryBackoff?.initialMs ?? DEFAULT_RETRY_INITIAL_MS);
    this.retryMaxMs = Math.max(this.retryInitialMs, options.retryBackoff?.maxMs ?? DEFAULT_RETRY_MAX_MS);
    this.onError = options.onError;
    this.retainConsumedOnly = options.retention === 'consumed';
    this.handOver = options.values === 'hand-over';
  }

  /** With 'consumed' retention: drops what every group subscribed to the log's topic has committed past. */
  trimConsumed(log: PartitionLog): void {
    if (!this.retainConsumedOnly) return;
    const topic = new Set([log.topic]);
    let lowest = Number.POSITIVE_INFINITY;
    for (const group of this.groups.values()) {
      if (!group.subscribes(topic)) continue;
      const committed = group.peekCommitted(log.topic, log.partition);
      if (committed === undefined) return;
      lowest = Math.min(lowest, committed);
    }
    if (Number.isFinite(lowest)) log.trimBefore(lowest);
  }

  ensureTopics(specs: readonly TopicSpec[]): void {
    this.assertOpen();
    for (const spec of specs) {
      checkTopicName(spec.topic);
      checkPartitionCount(spec.partitions);
    }
    const grown = new Set<string>();
    for (const spec of specs) {
      const existing = this.topics.get(spec.topic);
      if (existing === undefined) {
        this.topics.set(spec.topic, new Topic(spec.topic, spec.partitions));
      } else if (existing.grow(spec.partitions)) {
        grown.add(spec.topic);
      }
    }
    if (grown.size === 0) return;
    for (const group of this.groups.values()) {
      if (group.subscribes(grown)) this.rebalance(group);
    }
  }

  send(topicName: string, messages: readonly BusMessage[]): void {
    this.assertOpen();
    const topic = this.topic(topicName);
    // Route, check and copy everything before storing anything, so a bad message stores none of the
    // send and retains no lease of it.
    const routed = messages.map((message) => {
      if (typeof message.key !== 'string') throw new BusError('message key must be a string', false);
      const log = topic.partitions[partitionForKey(message.key, topic.partitions.length)];
      if (log === undefined) throw new BusError(`no partition for key ${message.key}`, false);
      return { log, message: this.handOver ? checkLease(checkMessage(message)) : copyMessage(message) };
    });
    const touched = new Set<PartitionLog>();
    for (const { log, message } of routed) {
      log.append(message);
      touched.add(log);
    }
    for (const log of touched) log.notify();
  }

  createConsumer(options: InProcessConsumerOptions): InProcessConsumer {
    this.assertOpen();
    if (options.groupId.length === 0) throw new BusError('consumer groupId must not be empty', false);
    if (options.topics.length === 0) throw new BusError('consumer must subscribe to at least one topic', false);
    options.topics.forEach(checkTopicName);
    const maxBatchMessages = options.maxBatchMessages ?? DEFAULT_MAX_BATCH_MESSAGES;
    if (!Number.isInteger(maxBatchMessages) || maxBatchMessages < 1) {
      throw new BusError(`maxBatchMessages must be a positive integer, got ${maxBatchMessages}`, false);
    }
    const consumer = new InProcessConsumer(this, {
      groupId: options.groupId,
      topics: [...new Set(options.topics)],
      start: options.start ?? 'earliest',
      maxBatchMessages,
      onError: options.onError,
    });
    this.consumers.add(consumer);
    return consumer;
  }

  close(): Promise<void> {
    this.closing ??= this.shutDown();
    return this.closing;
  }

  log(topic: string, partition: number): PartitionLog {
    this.assertOpen();
    const log = this.topics.get(topic)?.partitions[partition];
    if (log === undefined) throw new BusError(`no partition ${partition} in topic ${topic}`, false);
    return log;
  }

  committed(groupId: string, topic: string, partition: number): number | undefined {
    return this.groups.get(groupId)?.partitionState(topic, partition).committed;
  }

  join(consumer: InProcessConsumer): void {
    this.assertOpen();
    for (const name of consumer.options.topics) this.topic(name);
    let group = this.groups.get(consumer.options.groupId);
    if (group === undefined) {
      group = new ConsumerGroup();
      this.groups.set(consumer.options.groupId, group);
    }
    group.members.push(consumer);
    this.rebalance(group);
  }

  leave(consumer: InProcessConsumer): void {
    const group = this.groups.get(consumer.options.groupId);
    const index = group?.members.indexOf(consumer) ?? -1;
    if (group === undefined || index < 0) return;
    group.members.splice(index, 1);
    this.rebalance(group);
  }

  forget(consumer: InProcessConsumer): void {
    this.consumers.delete(consumer);
  }

  assertOpen(): void {
    if (this.closed) throw new BusError('the in-process bus is closed', false);
  }

  /**
   * Round-robin over the sorted topic-partitions, in join order, skipping members not subscribed to a
   * partition's topic. Partitions a member keeps keep their worker; a moved partition's new worker starts
   * only once the old one has finished its batch, so a partition never has two batches in flight.
   */
  private rebalance(group: ConsumerGroup): void {
    const target = new Map<InProcessConsumer, Map<string, PartitionLog>>();
    for (const member of group.members) target.set(member, new Map());
    const topicNames = [...new Set(group.members.flatMap((member) => member.options.topics))].sort();
    let turn = 0;
    for (const name of topicNames) {
      const candidates = group.members.filter((member) => member.options.topics.includes(name));
      for (const log of this.topic(name).partitions) {
        const member = candidates[turn % candidates.length];
        turn++;
        if (member !== undefined) target.get(member)?.set(log.key, log);
      }
    }
    for (const member of group.members) {
      const wanted = target.get(member);
      for (const key of member.assignedKeys()) {
        if (wanted?.has(key) !== true) member.revoke(key);
      }
    }
    for (const member of group.members) {
      for (const log of target.get(member)?.values() ?? []) {
        if (member.isAssigned(log.key)) continue;
        const state = group.partitionState(log.topic, log.partition);
        // The reset position is fixed when the group first owns the partition, so messages sent after
        // run() resolves are never skipped, whichever member ends up consuming them.
        if (state.committed === undefined && member.options.start === 'latest') state.committed = log.end;
        member.assign(log, state);
      }
    }
  }

  private topic(name: string): Topic {
    checkTopicName(name);
    let topic = this.topics.get(name);
    if (topic === undefined) {
      topic = new Topic(name, this.defaultPartitions);
      this.topics.set(name, topic);
    }
    return topic;
  }

  private async shutDown(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.consumers].map((consumer) => consumer.stop()));
    this.consumers.clear();
    this.groups.clear();
    // No handler runs any more: every stored value goes back to its owner.
    for (const topic of this.topics.values()) {
      for (const log of topic.partitions) log.trimBefore(log.end);
    }
    this.topics.clear();
  }
}

interface ResolvedConsumerOptions {
  readonly groupId: string;
  readonly topics: readonly string[];
  readonly start: 'earliest' | 'latest';
  readonly maxBatchMessages: number;
  readonly onError: BatchErrorListener | undefined;
}

type ConsumerState = 'created' | 'running' | 'stopping' | 'stopped';

class InProcessConsumer implements BusConsumer {
  private state: ConsumerState = 'created';
  private handler: BatchHandler | undefined;
  private stopping: Promise<void> | undefined;
  private readonly workers = new Map<string, PartitionWorker>();
  private readonly retiring = new Set<Promise<void>>();

  constructor(
    private readonly broker: Broker,
    readonly options: ResolvedConsumerOptions,
  ) {}

  run(handler: BatchHandler): Promise<void> {
    return new Promise((resolve) => {
      if (this.state !== 'created') throw new BusError(`consumer cannot run: it is ${this.state}`, false);
      this.broker.assertOpen();
      this.handler = handler;
      this.state = 'running';
      this.broker.join(this);
      resolve();
    });
  }

  stop(): Promise<void> {
    if (this.state === 'created') {
      this.state = 'stopped';
      this.broker.forget(this);
    }
    if (this.state === 'stopped') return Promise.resolve();
    this.stopping ??= this.leave();
    return this.stopping;
  }

  assignedKeys(): string[] {
    return [...this.workers.keys()];
  }

  isAssigned(key: string): boolean {
    return this.workers.has(key);
  }

  assign(log: PartitionLog, state: GroupPartition): void {
    const handler = this.handler;
    if (handler === undefined || this.state !== 'running') return;
    const worker = new PartitionWorker(log, state, handler, this.options, this.broker);
    this.workers.set(log.key, worker);
    const previous = state.owner;
    state.owner = worker;
    worker.start(previous?.done);
  }

  revoke(key: string): void {
    const worker = this.workers.get(key);
    if (worker === undefined) return;
    this.workers.delete(key);
    worker.revoke();
    // stop() must not resolve while a revoked partition's batch is still running.
    this.retiring.add(worker.done);
    void worker.done.then(() => this.retiring.delete(worker.done));
  }

  /**
   * Leaving at once lets the group hand the partitions out now; their new workers wait for this member's
   * batches to settle (and commit, if they succeed) before reading the committed offsets.
   */
  private async leave(): Promise<void> {
    this.state = 'stopping';
    for (const key of this.assignedKeys()) this.revoke(key);
    this.broker.leave(this);
    await Promise.all([...this.retiring]);
    this.state = 'stopped';
    this.broker.forget(this);
  }
}

class PartitionWorker {
  done: Promise<void> = Promise.resolve();
  private active = true;
  private wake: (() => void) | undefined;
  /** Since when this worker has been delivering without letting the event loop turn. */
  private busySince = performance.now();
  private readonly context: BatchContext = {
    heartbeat: () => Promise.resolve(),
    isActive: () => this.active,
  };

  constructor(
    private readonly log: PartitionLog,
    private readonly state: GroupPartition,
    private readonly handler: BatchHandler,
    private readonly options: ResolvedConsumerOptions,
    private readonly broker: Broker,
  ) {}

  start(previous: Promise<void> | undefined): void {
    this.done = this.consume(previous).finally(() => {
      if (this.state.owner === this) this.state.owner = undefined;
    });
  }

  /** Lets the batch in flight finish; cuts short a wait for messages or a backoff. */
  revoke(): void {
    this.active = false;
    this.wake?.();
  }

  private async consume(previous: Promise<void> | undefined): Promise<void> {
    await previous;
    let position: number | undefined;
    let failures = 0;
    while (this.active) {
      position ??= this.state.committed ?? this.log.start;
      // Records deleted under the group's position: resume at the first one left.
      if (position < this.log.start) position = this.log.start;
      if (position >= this.log.end) {
        await this.waitForAppend();
        this.busySince = performance.now();
        continue;
      }
      const batch: MessageBatch = {
        topic: this.log.topic,
        partition: this.log.partition,
        messages: this.log.read(position, this.options.maxBatchMessages),
      };
      if (await this.handle(batch)) {
        position += batch.messages.length;
        this.state.committed = position;
        this.broker.trimConsumed(this.log);
        failures = 0;
        // Let timers and I/O run between batches, as a network fetch would, once this worker has been
        // delivering for YIELD_AFTER_MS without a break. Until then, and whenever nothing is left to
        // read, it goes straight on (to the next batch, or to wait for an append, which wakes it at
        // once): a request and its replies can then cross several topics in one turn of the event
        // loop. A coordinated checkpoint's cut, appended while the members were still finishing the
        // prepare's batch, used to wait a turn for them; so did every write they held.
        if (position < this.log.end && performance.now() - this.busySince >= YIELD_AFTER_MS) {
          await new Promise<void>((resolve) => setImmediate(resolve));
          this.busySince = performance.now();
        }
      } else if (this.active) {
        failures++;
        await this.backoff(failures);
      }
    }
  }

  private async handle(batch: MessageBatch): Promise<boolean> {
    // The handler's own hold on handed-over values: the log may drop a message while its handler still
    // reads it (deleteRecordsBefore, or another group's commit once this member has left its group),
    // and the owner must not reuse the memory before the handler settles.
    const leased = this.broker.handOver ? batch.messages : [];
    for (const message of leased) message.lease?.retain();
    try {
      await this.handler(batch, this.context);
      return true;
    } catch (error: unknown) {
      for (const listener of [this.options.onError, this.broker.onError]) {
        try {
          listener?.(error, batch);
        } catch {
          // A broken listener must not stop redelivery, and this driver logs nothing itself.
        }
      }
      return false;
    } finally {
      for (const message of leased) message.lease?.release();
    }
  }

  private waitForAppend(): Promise<void> {
    return new Promise((resolve) => {
      const wake = (): void => {
        this.log.unwatch(wake);
        this.wake = undefined;
        resolve();
      };
      this.wake = wake;
      this.log.watch(wake);
    });
  }

  private backoff(failures: number): Promise<void> {
    const ceiling = Math.min(this.broker.retryMaxMs, this.broker.retryInitialMs * 2 ** Math.min(failures - 1, 30));
    // Equal jitter: at least half the ceiling, so retries back off, spread so they do not align.
    const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    return new Promise((resolve) => {
      const wake = (): void => {
        clearTimeout(timer);
        this.wake = undefined;
        resolve();
      };
      const timer = setTimeout(wake, delay);
      this.wake = wake;
    });
  }
}

interface GroupPartition {
  /** Next offset the group consumes. */
  committed: number | undefined;
  /** The worker consuming the partition, so that a successor waits for it. */
  owner: PartitionWorker | undefined;
}

class ConsumerGroup {
  /** In join order, which the assignor relies on. */
  readonly members: InProcessConsumer[] = [];
  private readonly partitions = new Map<string, GroupPartition>();

  partitionState(topic: string, partition: number): GroupPartition {
    const key = partitionKey(topic, partition);
    let state = this.partitions.get(key);
    if (state === undefined) {
      state = { committed: undefined, owner: undefined };
      this.partitions.set(key, state);
    }
    return state;
  }

  /** The committed offset without creating state for a partition the group never touched. */
  peekCommitted(topic: string, partition: number): number | undefined {
    return this.partitions.get(partitionKey(topic, partition))?.committed;
  }

  subscribes(topics: ReadonlySet<string>): boolean {
    return this.members.some((member) => member.options.topics.some((topic) => topics.has(topic)));
  }
}

class Topic {
  readonly partitions: PartitionLog[] = [];

  constructor(
    readonly name: string,
    partitions: number,
  ) {
    this.grow(partitions);
  }

  grow(partitions: number): boolean {
    const before = this.partitions.length;
    for (let p = before; p < partitions; p++) this.partitions.push(new PartitionLog(this.name, p));
    return this.partitions.length > before;
  }
}

class PartitionLog {
  readonly key: string;
  /** messages[i] has offset base + i. Those below startOffset are dropped, kept only until compaction. */
  private messages: ConsumedMessage[] = [];
  private base = 0;
  private startOffset = 0;
  private readonly watchers = new Set<() => void>();

  constructor(
    readonly topic: string,
    readonly partition: number,
  ) {
    this.key = partitionKey(topic, partition);
  }

  get start(): number {
    return this.startOffset;
  }

  get end(): number {
    return this.base + this.messages.length;
  }

  /** Only a handed-over message carries a lease here: a copy has none. */
  append(message: BusMessage): void {
    message.lease?.retain();
    this.messages.push(
      Object.freeze({ ...message, topic: this.topic, partition: this.partition, offset: String(this.end) }),
    );
  }

  /** `from` is at least start: readers resume at start when messages were dropped under them. */
  read(from: number, max: number): ConsumedMessage[] {
    const index = from - this.base;
    return this.messages.slice(index, index + max);
  }

  /**
   * Drops messages below `offset` and releases their leases, each exactly once. Both happen at once,
   * since an owner reusing its memory in order waits for the oldest holder; only the array is compacted
   * lazily, when that frees enough to be worth copying the rest (a quarter of it, or 1024 messages), so
   * trimming after every batch stays amortised O(1) per message. Returns the new start offset.
   */
  trimBefore(offset: number): number {
    const until = Math.min(offset, this.end);
    while (this.startOffset < until) {
      const message = this.messages[this.startOffset - this.base];
      // Moved past first, so that a lease whose release throws is still never released twice.
      this.startOffset++;
      message?.lease?.release();
    }
    const dropped = this.startOffset - this.base;
    if (dropped >= 1024 || (dropped > 0 && dropped * 4 >= this.messages.length)) {
      this.messages = this.messages.slice(dropped);
      this.base = this.startOffset;
    }
    return this.startOffset;
  }

  watch(watcher: () => void): void {
    this.watchers.add(watcher);
  }

  unwatch(watcher: () => void): void {
    this.watchers.delete(watcher);
  }

  notify(): void {
    for (const watcher of [...this.watchers]) watcher();
  }
}

function partitionKey(topic: string, partition: number): string {
  // A partition number never contains ':', so the key is unambiguous whatever the topic name.
  return `${partition}:${topic}`;
}

/**
 * Kafka hands consumers their own bytes; copying keeps a producer reusing its buffer from changing the
 * log. The copy carries no lease: its memory is the bus's, and the sender's may be reused once send()
 * settles.
 */
function copyMessage(message: BusMessage): BusMessage {
  const value = Buffer.from(checkMessage(message).value);
  return message.headers === undefined
    ? { key: message.key, value }
    : { key: message.key, value, headers: Object.freeze({ ...message.headers }) };
}

function checkMessage(message: BusMessage): BusMessage {
  if (!Buffer.isBuffer(message.value)) throw new BusError('message value must be a Buffer', false);
  return message;
}

/**
 * Checked with the rest of the send: a lease without retain() would otherwise fail the send halfway
 * through its appends, and one without release() only once its message is dropped.
 */
function checkLease(message: BusMessage): BusMessage {
  const lease: unknown = message.lease;
  if (lease === undefined) return message;
  const { retain, release } = (typeof lease === 'object' && lease !== null ? lease : {}) as Record<string, unknown>;
  if (typeof retain !== 'function' || typeof release !== 'function') {
    throw new BusError('message lease must have retain() and release()', false);
  }
  return message;
}

function checkTopicName(name: string): void {
  if (!TOPIC_NAME.test(name) || name === '.' || name === '..') {
    throw new BusError(`invalid topic name ${JSON.stringify(name)}`, false);
  }
}

function checkPartitionCount(partitions: number): number {
  if (!Number.isInteger(partitions) || partitions < 1) {
    throw new BusError(`partition count must be a positive integer, got ${partitions}`, false);
  }
  return partitions;
}
