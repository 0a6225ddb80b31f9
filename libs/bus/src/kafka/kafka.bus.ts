import {
  type Admin,
  CompressionTypes,
  type Consumer,
  type EachBatchPayload,
  Kafka,
  type KafkaMessage,
  logLevel as KafkaLogLevel,
  type LogEntry,
  Partitioners,
  type Producer,
  type RetryOptions,
} from 'kafkajs';
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

export type KafkaBusLogLevel = 'error' | 'warn' | 'info' | 'debug';

export interface KafkaBusLogEntry {
  readonly level: KafkaBusLogLevel;
  /** Which part of kafkajs (or of this driver, as 'KafkaBus') is speaking. */
  readonly namespace: string;
  readonly message: string;
  readonly extra: Readonly<Record<string, unknown>>;
}

/** Receives what the driver and kafkajs have to say; the driver never writes to the console itself. */
export type KafkaBusLogger = (entry: KafkaBusLogEntry) => void;

/** Called when a handler rejects, before the batch is redelivered. Anything it throws is ignored. */
export type KafkaBatchErrorListener = (error: unknown, batch: MessageBatch) => void;

export interface KafkaBusOptions {
  /** host:port of one or more brokers to bootstrap from. */
  readonly brokers: readonly string[];
  /** Default 'continuum'. */
  readonly clientId?: string;
  /**
   * How ensureTopics makes topics exist:
   * - 'create' (default): CreateTopics with the spec's partition count and `replicationFactor`, then grows
   *   an existing topic that has fewer partitions (never shrinks one, as Kafka cannot).
   * - 'broker-auto-creates': the broker creates a topic, with its own default partition count, on the
   *   first metadata request naming it. ensureTopics only makes sure each topic exists and logs a warning
   *   when its partition count differs from the spec. For brokers without CreateTopics, such as
   *   librdkafka's mock cluster (4 partitions per topic, and its controller id matches no broker).
   */
  readonly topicCreation?: 'create' | 'broker-auto-creates';
  /** Replication factor of created topics. Default: the broker's default.replication.factor. */
  readonly replicationFactor?: number;
  readonly producer?: KafkaProducerOptions;
  readonly consumer?: KafkaConsumerSettings;
  /**
   * kafkajs's retry of retriable errors (connecting, leadership moves, coordinator changes), with
   * exponential backoff. Bounds how long an unreachable broker takes to fail. Default: kafkajs's
   * (5 retries from 300 ms, at most 30 s apart).
   */
  readonly retry?: {
    readonly retries?: number;
    readonly initialRetryTimeMs?: number;
    readonly maxRetryTimeMs?: number;
  };
  /** Time to establish a TCP connection to a broker. Default 1000 ms (kafkajs's). */
  readonly connectionTimeoutMs?: number;
  /** Time to wait for any one request's response. Default 30000 ms (kafkajs's). */
  readonly requestTimeoutMs?: number;
  /** Longest health() waits for the cluster to answer. Default 5000 ms. */
  readonly healthTimeoutMs?: number;
  readonly logger?: KafkaBusLogger;
  /** Lowest level passed to the logger. Default 'warn'. */
  readonly logLevel?: KafkaBusLogLevel;
  readonly onError?: KafkaBatchErrorListener;
}

export interface KafkaProducerOptions {
  /**
   * Idempotent producer (sequence numbers per partition, so a retried request is never stored twice or
   * out of order). Default true. Brokers that do not support it (librdkafka's mock) need false; see
   * docs/kafka-ordering.md for what then holds.
   */
  readonly idempotent?: boolean;
  /** Default 'none'; 'gzip' needs no extra package. */
  readonly compression?: 'none' | 'gzip';
  /** Time the broker may take to gather acknowledgements from all in-sync replicas. Default 30000 ms. */
  readonly ackTimeoutMs?: number;
  /**
   * Sends arriving within this window are combined into one produce request (Kafka's linger.ms). Default
   * 0: every send is its own request, as the splitter already sends many records per message.
   */
  readonly lingerMs?: number;
  /** A combined request is sent at once when it reaches this many messages. Default 10000. */
  readonly maxBatchMessages?: number;
}

export interface KafkaConsumerSettings {
  /** Default 30000 ms. */
  readonly sessionTimeoutMs?: number;
  /** Default 60000 ms. */
  readonly rebalanceTimeoutMs?: number;
  /** Also how often the driver heartbeats while a handler runs. Default 3000 ms. */
  readonly heartbeatIntervalMs?: number;
  /** Longest a fetch waits for data. Default 1000 ms. */
  readonly maxWaitTimeInMs?: number;
  /** Default 1 MiB. */
  readonly maxBytesPerPartition?: number;
  /** Batches of different partitions handled at once by one consumer. Default 8. */
  readonly partitionsConsumedConcurrently?: number;
  /** Delay before a rejected batch is redelivered: doubles per failure from initialMs up to maxMs, with jitter. */
  readonly retryBackoff?: { readonly initialMs?: number; readonly maxMs?: number };
}

export interface KafkaConsumerOptions extends ConsumerOptions {
  /** Called as well as the bus-wide listener. */
  readonly onError?: KafkaBatchErrorListener;
}

export interface BusHealth {
  readonly status: 'ok' | 'unavailable';
  readonly detail: string;
}

const DEFAULT_MAX_BATCH_MESSAGES = 500;
const DEFAULT_RETRY_INITIAL_MS = 50;
const DEFAULT_RETRY_MAX_MS = 2_000;
const TOPIC_NAME = /^[a-zA-Z0-9._-]{1,249}$/;
// Protocol errors that mean this member's assignment is no longer valid.
// Protocol errors after which this member must rejoin (kafkajs's isRebalancing, plus an expired membership):
// under the eager protocol kafkajs uses, every partition it held is revoked.
const REVOKING_ERRORS = new Set([
  'REBALANCE_IN_PROGRESS',
  'ILLEGAL_GENERATION',
  'NOT_COORDINATOR_FOR_GROUP',
  'UNKNOWN_MEMBER_ID',
]);
// kafkajs errors that say the cluster could not be reached or answered in time: worth trying again later.
const RETRIABLE_NAMES = new Set([
  'KafkaJSNumberOfRetriesExceeded',
  'KafkaJSConnectionError',
  'KafkaJSConnectionClosedError',
  'KafkaJSRequestTimeoutError',
  'KafkaJSBrokerNotFound',
  'KafkaJSNoBrokerAvailableError',
  'KafkaJSLockTimeout',
  'KafkaJSTimeout',
]);

/**
 * The Bus on Kafka through kafkajs. One kafkajs producer is shared by every BusProducer; each BusConsumer
 * is one kafkajs consumer (one group member) using eachBatch with auto-commit off, committing a batch's
 * offsets only after its handler resolves. See docs/kafka-ordering.md for what holds across retries, rebalances and
 * broker failover.
 */
export class KafkaBus implements Bus {
  readonly durable = true;
  readonly driverName = 'kafka';
  private readonly kafka: Kafka;
  private readonly settings: ResolvedSettings;
  private readonly consumers = new Set<KafkaBusConsumer>();
  private producer: SharedProducer | undefined;
  private admin: Lazy<Admin> | undefined;
  private closed = false;
  private closing: Promise<void> | undefined;

  constructor(private readonly options: KafkaBusOptions) {
    if (options.brokers.length === 0) throw new BusError('KafkaBus needs at least one broker', false);
    this.settings = resolveSettings(options);
    this.kafka = new Kafka({
      clientId: options.clientId ?? 'continuum',
      brokers: [...options.brokers],
      connectionTimeout: options.connectionTimeoutMs ?? 1_000,
      requestTimeout: options.requestTimeoutMs ?? 30_000,
      retry: this.settings.retry,
      ...loggingOptions(options),
    });
  }

  async ensureTopics(specs: readonly TopicSpec[]): Promise<void> {
    this.assertOpen();
    for (const spec of specs) {
      checkTopicName(spec.topic);
      checkPartitionCount(spec.partitions);
    }
    if (specs.length === 0) return;
    const admin = await this.connectedAdmin();
    try {
      if (this.options.topicCreation === 'broker-auto-creates') {
        await this.awaitAutoCreated(admin, specs);
      } else {
        await this.createOrGrow(admin, specs);
      }
    } catch (error) {
      throw toBusError(`ensureTopics(${specs.map((s) => s.topic).join(', ')})`, error);
    }
  }

  /** Cheap: every BusProducer shares one kafkajs producer, connected on the first send. */
  createProducer(): BusProducer {
    return {
      send: async (topic, messages) => {
        this.assertOpen();
        checkTopicName(topic);
        const converted = messages.map(toKafkaMessage);
        this.producer ??= new SharedProducer(this.kafka, this.settings);
        await this.producer.send(topic, converted);
      },
    };
  }

  createConsumer(options: KafkaConsumerOptions): BusConsumer {
    this.assertOpen();
    if (options.groupId.length === 0) throw new BusError('consumer groupId must not be empty', false);
    if (options.topics.length === 0) throw new BusError('consumer must subscribe to at least one topic', false);
    options.topics.forEach(checkTopicName);
    const maxBatchMessages = options.maxBatchMessages ?? DEFAULT_MAX_BATCH_MESSAGES;
    if (!Number.isInteger(maxBatchMessages) || maxBatchMessages < 1) {
      throw new BusError(`maxBatchMessages must be a positive integer, got ${maxBatchMessages}`, false);
    }
    const consumer = new KafkaBusConsumer(this.kafka, this.settings, {
      groupId: options.groupId,
      topics: [...new Set(options.topics)],
      start: options.start ?? 'earliest',
      maxBatchMessages,
      onError: options.onError,
      forget: (self) => this.consumers.delete(self),
    });
    this.consumers.add(consumer);
    return consumer;
  }

  /** Whether the cluster answers a metadata request within healthTimeoutMs. Never throws. */
  async health(): Promise<BusHealth> {
    if (this.closed) return { status: 'unavailable', detail: 'the bus is closed' };
    // A dedicated admin without retries, so the answer comes within the timeout and says what failed.
    const admin = this.kafka.admin({ retry: { retries: 0 } });
    try {
      const cluster = await withTimeout(
        (async () => {
          await admin.connect();
          return admin.describeCluster();
        })(),
        this.settings.healthTimeoutMs,
        'the cluster did not answer',
      );
      const brokers = cluster.brokers.map((b) => `${b.nodeId}@${b.host}:${b.port}`).join(', ');
      return {
        status: 'ok',
        detail:
          `${cluster.brokers.length} broker(s) (${brokers}), ` +
          `controller ${cluster.controller ?? 'unknown'}, cluster ${cluster.clusterId}`,
      };
    } catch (error) {
      return { status: 'unavailable', detail: describeError(error) };
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
  }

  /** Stops every consumer (each after its batch in progress), then disconnects. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.shutDown();
    return this.closing;
  }

  private async shutDown(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.consumers].map((consumer) => consumer.stop()));
    this.consumers.clear();
    await Promise.all([this.producer?.close(), this.admin?.close((admin) => admin.disconnect())]);
  }

  private assertOpen(): void {
    if (this.closed) throw new BusError('the Kafka bus is closed', false);
  }

  private connectedAdmin(): Promise<Admin> {
    this.admin ??= new Lazy(async () => {
      const admin = this.kafka.admin();
      await admin.connect();
      return admin;
    });
    return this.admin.get().catch((error: unknown) => {
      this.admin = undefined;
      throw toBusError('connecting to the Kafka cluster', error);
    });
  }

  private async createOrGrow(admin: Admin, specs: readonly TopicSpec[]): Promise<void> {
    const wanted = mergeSpecs(specs);
    await admin.createTopics({
      waitForLeaders: true,
      topics: [...wanted].map(([topic, partitions]) => ({
        topic,
        numPartitions: partitions,
        ...(this.options.replicationFactor === undefined ? {} : { replicationFactor: this.options.replicationFactor }),
      })),
    });
    // createTopics leaves existing topics alone; grow those with fewer partitions, as the in-process bus does.
    const metadata = await admin.fetchTopicMetadata({ topics: [...wanted.keys()] });
    const grow = metadata.topics
      .map((topic) => ({ topic: topic.name, count: wanted.get(topic.name) ?? 0, has: topic.partitions.length }))
      .filter((topic) => topic.count > topic.has)
      .map(({ topic, count }) => ({ topic, count }));
    if (grow.length > 0) await admin.createPartitions({ topicPartitions: grow, validateOnly: false });
  }

  private async awaitAutoCreated(admin: Admin, specs: readonly TopicSpec[]): Promise<void> {
    const wanted = mergeSpecs(specs);
    const metadata = await admin.fetchTopicMetadata({ topics: [...wanted.keys()] });
    for (const topic of metadata.topics) {
      const requested = wanted.get(topic.name);
      if (requested !== undefined && requested !== topic.partitions.length) {
        this.settings.log('warn', `topic ${topic.name} has ${topic.partitions.length} partitions, not ${requested}`, {
          topic: topic.name,
          partitions: topic.partitions.length,
          requested,
          reason: "topicCreation is 'broker-auto-creates': the broker chose the partition count",
        });
      }
    }
  }
}

interface ResolvedSettings {
  readonly retry: RetryOptions;
  readonly idempotent: boolean;
  readonly compression: CompressionTypes;
  readonly ackTimeoutMs: number;
  readonly lingerMs: number;
  readonly producerMaxBatchMessages: number;
  readonly sessionTimeoutMs: number;
  readonly rebalanceTimeoutMs: number;
  readonly heartbeatIntervalMs: number;
  readonly maxWaitTimeInMs: number;
  readonly maxBytesPerPartition: number;
  readonly partitionsConsumedConcurrently: number;
  readonly retryInitialMs: number;
  readonly retryMaxMs: number;
  readonly healthTimeoutMs: number;
  readonly onError: KafkaBatchErrorListener | undefined;
  readonly log: (level: KafkaBusLogLevel, message: string, extra?: Record<string, unknown>) => void;
}

function resolveSettings(options: KafkaBusOptions): ResolvedSettings {
  const retryInitialMs = Math.max(0, options.consumer?.retryBackoff?.initialMs ?? DEFAULT_RETRY_INITIAL_MS);
  const threshold = levelRank(options.logLevel ?? 'warn');
  const logger = options.logger;
  return {
    retry: {
      ...(options.retry?.retries === undefined ? {} : { retries: options.retry.retries }),
      ...(options.retry?.initialRetryTimeMs === undefined
        ? {}
        : { initialRetryTime: options.retry.initialRetryTimeMs }),
      ...(options.retry?.maxRetryTimeMs === undefined ? {} : { maxRetryTime: options.retry.maxRetryTimeMs }),
    },
    idempotent: options.producer?.idempotent ?? true,
    compression: options.producer?.compression === 'gzip' ? CompressionTypes.GZIP : CompressionTypes.None,
    ackTimeoutMs: options.producer?.ackTimeoutMs ?? 30_000,
    lingerMs: Math.max(0, options.producer?.lingerMs ?? 0),
    producerMaxBatchMessages: Math.max(1, options.producer?.maxBatchMessages ?? 10_000),
    sessionTimeoutMs: options.consumer?.sessionTimeoutMs ?? 30_000,
    rebalanceTimeoutMs: options.consumer?.rebalanceTimeoutMs ?? 60_000,
    heartbeatIntervalMs: options.consumer?.heartbeatIntervalMs ?? 3_000,
    maxWaitTimeInMs: options.consumer?.maxWaitTimeInMs ?? 1_000,
    maxBytesPerPartition: options.consumer?.maxBytesPerPartition ?? 1_048_576,
    partitionsConsumedConcurrently: Math.max(1, options.consumer?.partitionsConsumedConcurrently ?? 8),
    retryInitialMs,
    retryMaxMs: Math.max(retryInitialMs, options.consumer?.retryBackoff?.maxMs ?? DEFAULT_RETRY_MAX_MS),
    healthTimeoutMs: options.healthTimeoutMs ?? 5_000,
    onError: options.onError,
    log: (level, message, extra = {}) => {
      if (logger === undefined || levelRank(level) > threshold) return;
      try {
        logger({ level, namespace: 'KafkaBus', message, extra });
      } catch {
        // A broken logger must not break the bus.
      }
    },
  };
}

/**
 * The one kafkajs producer behind every BusProducer: connected on first use, and, with lingerMs, combining
 * concurrent sends into one request. Sends are queued in call order, so one caller's sends to a partition
 * stay in order even when combined.
 */
class SharedProducer {
  private readonly producer: Producer;
  private readonly connection: Lazy<Producer>;
  private pending: { topicMessages: Map<string, KafkaOutMessage[]>; count: number; done: Deferred } | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    kafka: Kafka,
    private readonly settings: ResolvedSettings,
  ) {
    this.producer = kafka.producer({
      // murmur2 of the key, as Kafka's Java client and partitionForKey (not the LegacyPartitioner of kafkajs 1.x).
      createPartitioner: Partitioners.DefaultPartitioner,
      idempotent: settings.idempotent,
      // One produce request in flight per connection, so a later request cannot be stored ahead of an earlier
      // one that fails and is retried. kafkajs's idempotent producer serialises requests per broker anyway.
      maxInFlightRequests: 1,
      // As the in-process bus creates a topic on first use; a broker only does so if it allows auto-creation.
      allowAutoTopicCreation: true,
      retry: settings.retry,
    });
    this.connection = new Lazy(async () => {
      await this.producer.connect();
      return this.producer;
    });
  }

  async send(topic: string, messages: KafkaOutMessage[]): Promise<void> {
    if (messages.length === 0) return;
    if (this.settings.lingerMs === 0) {
      await this.produce(new Map([[topic, messages]]));
      return;
    }
    this.pending ??= { topicMessages: new Map(), count: 0, done: deferred() };
    const pending = this.pending;
    const list = pending.topicMessages.get(topic) ?? [];
    list.push(...messages);
    pending.topicMessages.set(topic, list);
    pending.count += messages.length;
    if (pending.count >= this.settings.producerMaxBatchMessages) this.flush();
    else this.timer ??= setTimeout(() => this.flush(), this.settings.lingerMs);
    await pending.done.promise;
  }

  async close(): Promise<void> {
    this.flush();
    await this.connection.close((producer) => producer.disconnect());
  }

  private flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const pending = this.pending;
    this.pending = undefined;
    if (pending === undefined) return;
    this.produce(pending.topicMessages).then(pending.done.resolve, pending.done.reject);
  }

  private async produce(topicMessages: Map<string, KafkaOutMessage[]>): Promise<void> {
    const description = `sending to ${[...topicMessages.keys()].join(', ')}`;
    let producer: Producer;
    try {
      producer = await this.connection.get();
    } catch (error) {
      throw toBusError(description, error);
    }
    try {
      await producer.sendBatch({
        topicMessages: [...topicMessages].map(([topic, messages]) => ({ topic, messages })),
        acks: -1,
        timeout: this.settings.ackTimeoutMs,
        compression: this.settings.compression,
      });
    } catch (error) {
      throw toBusError(description, error);
    }
  }
}

interface KafkaOutMessage {
  key: Buffer;
  value: Buffer;
  headers?: Record<string, string>;
}

function toKafkaMessage(message: BusMessage): KafkaOutMessage {
  if (typeof message.key !== 'string') throw new BusError('message key must be a string', false);
  if (!Buffer.isBuffer(message.value)) throw new BusError('message value must be a Buffer', false);
  // The key as UTF-8 bytes is what partitionForKey hashes, so both drivers route a key alike.
  const out: KafkaOutMessage = { key: Buffer.from(message.key, 'utf8'), value: message.value };
  if (message.headers !== undefined) out.headers = { ...message.headers };
  return out;
}

interface ResolvedConsumerOptions {
  readonly groupId: string;
  readonly topics: readonly string[];
  readonly start: 'earliest' | 'latest';
  readonly maxBatchMessages: number;
  readonly onError: KafkaBatchErrorListener | undefined;
  readonly forget: (consumer: KafkaBusConsumer) => void;
}

type ConsumerState = 'created' | 'starting' | 'running' | 'stopping' | 'stopped';

class KafkaBusConsumer implements BusConsumer {
  private state: ConsumerState = 'created';
  /** Set by stop(), read by batches in flight: the state alone lags while run() is still settling. */
  private stopRequested = false;
  private consumer: Consumer | undefined;
  private starting: Promise<void> | undefined;
  private stopping: Promise<void> | undefined;
  /** Counts group joins; a batch belongs to the generation it started in. */
  private generation = 0;
  /** The error that told this member its generation's assignment is gone, by generation. */
  private readonly revoked = new Map<number, Error>();
  private readonly wakers = new Set<() => void>();

  constructor(
    private readonly kafka: Kafka,
    private readonly settings: ResolvedSettings,
    private readonly options: ResolvedConsumerOptions,
  ) {}

  run(handler: BatchHandler): Promise<void> {
    if (this.state !== 'created') {
      return Promise.reject(new BusError(`consumer cannot run: it is ${this.state}`, false));
    }
    this.state = 'starting';
    this.starting = this.start(handler).then(
      () => {
        if (this.state === 'starting') this.state = 'running';
      },
      async (error: unknown) => {
        await this.consumer?.disconnect().catch(() => undefined);
        this.consumer = undefined;
        // A failed start may be tried again, unless stop() came meanwhile.
        if (this.state === 'starting') this.state = 'created';
        throw toBusError(`starting consumer of group ${this.options.groupId}`, error);
      },
    );
    return this.starting;
  }

  stop(): Promise<void> {
    if (this.state === 'created') {
      this.state = 'stopped';
      this.options.forget(this);
    }
    if (this.state === 'stopped') return Promise.resolve();
    this.stopping ??= this.leave();
    return this.stopping;
  }

  private async leave(): Promise<void> {
    this.state = 'stopping';
    this.stopRequested = true;
    this.wakeAll();
    await this.starting?.catch(() => undefined);
    // disconnect() waits for the batches in progress (their handlers and commits), then leaves the group.
    await this.consumer?.disconnect().catch((error: unknown) => {
      this.settings.log('warn', 'consumer did not disconnect cleanly', { error: describeError(error) });
    });
    this.state = 'stopped';
    this.options.forget(this);
  }

  private async start(handler: BatchHandler): Promise<void> {
    const consumer = this.kafka.consumer({
      groupId: this.options.groupId,
      sessionTimeout: this.settings.sessionTimeoutMs,
      rebalanceTimeout: this.settings.rebalanceTimeoutMs,
      heartbeatInterval: this.settings.heartbeatIntervalMs,
      maxWaitTimeInMs: this.settings.maxWaitTimeInMs,
      maxBytesPerPartition: this.settings.maxBytesPerPartition,
      allowAutoTopicCreation: true,
      retry: {
        ...this.settings.retry,
        // Before the first fetch a crash fails run(); afterwards kafkajs rejoins, unless we are stopping.
        restartOnFailure: () => Promise.resolve(this.state === 'running' && !this.stopRequested),
      },
    });
    this.consumer = consumer;
    const ready = deferred();
    consumer.on(consumer.events.GROUP_JOIN, () => {
      this.generation++;
      // Batches of older generations test the generation number first, so their entries are no longer needed.
      this.revoked.clear();
      this.wakeAll();
    });
    // The first fetch after joining has resolved every assigned partition's start offset (committed, or
    // earliest/latest), so a message sent after run() resolves is never skipped by a 'latest' group.
    const stopWatchingFetches = consumer.on(consumer.events.FETCH, () => ready.resolve());
    consumer.on(consumer.events.CRASH, (event) => {
      ready.reject(event.payload.error);
      this.settings.log('error', `consumer of group ${this.options.groupId} crashed`, {
        error: describeError(event.payload.error),
        restart: event.payload.restart,
      });
    });
    try {
      await consumer.connect();
      await consumer.subscribe({ topics: [...this.options.topics], fromBeginning: this.options.start === 'earliest' });
      await consumer.run({
        autoCommit: false,
        // Offsets are resolved by the driver, chunk by chunk, only after the handler resolved.
        eachBatchAutoResolve: false,
        partitionsConsumedConcurrently: this.settings.partitionsConsumedConcurrently,
        eachBatch: (payload) => this.eachBatch(payload, handler),
      });
      await ready.promise;
    } finally {
      stopWatchingFetches();
    }
  }

  /**
   * One kafkajs batch (one partition), delivered in chunks of at most maxBatchMessages. A chunk's offsets
   * are committed only after its handler resolves; a rejected chunk is delivered again after a backoff, and
   * nothing after it first. The batch ends early, without resolving what is left, when the consumer stops
   * or the group rebalances; what was not committed is then fetched again by whoever owns the partition.
   */
  private async eachBatch(payload: EachBatchPayload, handler: BatchHandler): Promise<void> {
    const { topic, partition } = payload.batch;
    const generation = this.generation;
    const isActive = (): boolean =>
      !this.stopRequested &&
      this.generation === generation &&
      !this.revoked.has(generation) &&
      payload.isRunning() &&
      !payload.isStale();
    const heartbeat = async (): Promise<void> => {
      try {
        await payload.heartbeat();
      } catch (error) {
        if (!(error instanceof Error) || !isRevoking(error)) throw error;
        this.revoked.set(generation, error);
        this.wakeAll();
      }
    };
    const context: BatchContext = { heartbeat, isActive };
    const messages = payload.batch.messages.map((m) => toConsumed(topic, partition, m));
    let index = 0;
    let failures = 0;
    while (index < messages.length && isActive()) {
      const chunk = messages.slice(index, index + this.options.maxBatchMessages);
      const batch: MessageBatch = { topic, partition, messages: chunk };
      if (await this.handle(handler, batch, context, heartbeat)) {
        const last = batch.messages[batch.messages.length - 1];
        if (last === undefined) break;
        // The committed offset is the next one to consume, as Kafka defines it.
        await payload.commitOffsetsIfNecessary({
          topics: [{ topic, partitions: [{ partition, offset: (BigInt(last.offset) + 1n).toString() }] }],
        });
        payload.resolveOffset(last.offset);
        index += batch.messages.length;
        failures = 0;
      } else if (isActive()) {
        failures++;
        await this.backoff(failures, heartbeat);
      }
    }
    const revocation = this.revoked.get(generation);
    // Rethrowing the broker's rebalance error makes kafkajs rejoin at once rather than after its retry delay.
    if (revocation !== undefined && !this.stopRequested) throw revocation;
  }

  private async handle(
    handler: BatchHandler,
    batch: MessageBatch,
    context: BatchContext,
    heartbeat: () => Promise<void>,
  ): Promise<boolean> {
    // A long handler must not cost this member its place in the group, and must learn of a rebalance.
    const beat = setInterval(() => {
      heartbeat().catch((error: unknown) => {
        this.settings.log('warn', 'heartbeat failed', { error: describeError(error) });
      });
    }, this.settings.heartbeatIntervalMs);
    try {
      await handler(batch, context);
      return true;
    } catch (error: unknown) {
      for (const listener of [this.options.onError, this.settings.onError]) {
        try {
          listener?.(error, batch);
        } catch {
          // A broken listener must not stop redelivery, and this driver logs nothing of its own here.
        }
      }
      return false;
    } finally {
      clearInterval(beat);
    }
  }

  /** Waits before a redelivery, heartbeating; cut short when the consumer stops or the group rebalances. */
  private async backoff(failures: number, heartbeat: () => Promise<void>): Promise<void> {
    const ceiling = Math.min(this.settings.retryMaxMs, this.settings.retryInitialMs * 2 ** Math.min(failures - 1, 30));
    // Equal jitter: at least half the ceiling, so retries back off, spread so they do not align.
    const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    let wake: () => void = () => undefined;
    const woken = new Promise<void>((resolve) => (wake = resolve));
    this.wakers.add(wake);
    const timer = setTimeout(wake, delay);
    const beat = setInterval(() => void heartbeat().catch(() => undefined), this.settings.heartbeatIntervalMs);
    try {
      await woken;
    } finally {
      clearTimeout(timer);
      clearInterval(beat);
      this.wakers.delete(wake);
    }
  }

  private wakeAll(): void {
    for (const wake of [...this.wakers]) wake();
  }
}

function toConsumed(topic: string, partition: number, message: KafkaMessage): ConsumedMessage {
  const headers = toHeaders(message.headers);
  const base = {
    topic,
    partition,
    offset: message.offset,
    key: message.key === null ? '' : message.key.toString('utf8'),
    value: message.value ?? Buffer.alloc(0),
  };
  return headers === undefined ? base : { ...base, headers };
}

function toHeaders(headers: KafkaMessage['headers']): Record<string, string> | undefined {
  if (headers === undefined) return undefined;
  const entries = Object.entries(headers);
  if (entries.length === 0) return undefined;
  const out: Record<string, string> = {};
  for (const [name, value] of entries) {
    // Kafka allows repeated headers; the bus's headers are a map, so the last one wins.
    const last = Array.isArray(value) ? value[value.length - 1] : value;
    if (last !== undefined) out[name] = last.toString();
  }
  return out;
}

function isRevoking(error: unknown): boolean {
  const type = errorType(error);
  return type !== undefined && REVOKING_ERRORS.has(type);
}

function errorType(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null || !('type' in error)) return undefined;
  return typeof error.type === 'string' ? error.type : undefined;
}

/** Wraps a kafkajs (or network) error, judging from its whole cause chain whether trying again may help. */
export function toBusError(what: string, error: unknown): BusError {
  if (error instanceof BusError) return error;
  let retriable = false;
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 10; e = e.cause, depth++) {
    if (RETRIABLE_NAMES.has(e.name) || ('retriable' in e && e.retriable === true)) retriable = true;
  }
  return new BusError(`${what}: ${describeError(error)}`, retriable, { cause: error });
}

function describeError(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const cause = error.cause instanceof Error && error.cause !== error ? ` (${describeError(error.cause)})` : '';
  return `${error.name}: ${error.message}${cause}`;
}

function mergeSpecs(specs: readonly TopicSpec[]): Map<string, number> {
  const wanted = new Map<string, number>();
  for (const spec of specs) wanted.set(spec.topic, Math.max(wanted.get(spec.topic) ?? 0, spec.partitions));
  return wanted;
}

function checkTopicName(name: string): void {
  if (!TOPIC_NAME.test(name) || name === '.' || name === '..') {
    throw new BusError(`invalid topic name ${JSON.stringify(name)}`, false);
  }
}

function checkPartitionCount(partitions: number): void {
  if (!Number.isInteger(partitions) || partitions < 1) {
    throw new BusError(`partition count must be a positive integer, got ${partitions}`, false);
  }
}

function levelRank(level: KafkaBusLogLevel): number {
  return { error: 1, warn: 2, info: 4, debug: 5 }[level];
}

function loggingOptions(options: KafkaBusOptions): {
  logLevel: KafkaLogLevel;
  logCreator?: () => (entry: LogEntry) => void;
} {
  const logger = options.logger;
  if (logger === undefined) return { logLevel: KafkaLogLevel.NOTHING };
  const names: Record<number, KafkaBusLogLevel> = {
    [KafkaLogLevel.ERROR]: 'error',
    [KafkaLogLevel.WARN]: 'warn',
    [KafkaLogLevel.INFO]: 'info',
    [KafkaLogLevel.DEBUG]: 'debug',
  };
  return {
    logLevel: levelRank(options.logLevel ?? 'warn'),
    logCreator: () => (entry) => {
      const { message, ...extra } = entry.log;
      try {
        logger({ level: names[entry.level] ?? 'debug', namespace: entry.namespace, message, extra });
      } catch {
        // A broken logger must not break kafkajs.
      }
    },
  };
}

interface Deferred {
  readonly promise: Promise<void>;
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
}

function deferred(): Deferred {
  let resolve: () => void = () => undefined;
  let reject: (error: unknown) => void = () => undefined;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Rejections nobody awaits yet (a crash after the first fetch) must not become unhandled.
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

function withTimeout<T>(work: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new BusError(`${message} within ${ms} ms`, true)), ms);
  });
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}

/** A connection made once on first use; a failed attempt is forgotten so the next use tries again. */
class Lazy<T> {
  private value: Promise<T> | undefined;

  constructor(private readonly create: () => Promise<T>) {}

  get(): Promise<T> {
    this.value ??= this.create().catch((error: unknown) => {
      this.value = undefined;
      throw error;
    });
    return this.value;
  }

  async close(release: (value: T) => Promise<void>): Promise<void> {
    const value = this.value;
    this.value = undefined;
    if (value === undefined) return;
    const resolved = await value.catch(() => undefined);
    if (resolved !== undefined) await release(resolved).catch(() => undefined);
  }
}
