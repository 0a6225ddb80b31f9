/**
 * The project's message bus, modelled on Kafka's semantics so that code written against one driver
 * behaves the same on the other:
 *
 * - A topic has a fixed number of partitions. A message's key picks its partition (murmur2 of the key,
 *   modulo the partition count, as Kafka's default partitioner does), so all messages of one VPG keep
 *   their relative order.
 * - Each partition is an append-only sequence with dense offsets starting at 0.
 * - Consumers belong to a group; each partition of a subscribed topic is assigned to exactly one
 *   member of the group at a time, and assignment is rebalanced when members join or leave.
 * - A consumer receives batches of one partition in offset order. When the handler resolves, the
 *   batch's offsets are committed for the group. When it rejects, nothing is committed and the same
 *   messages are delivered again (after a backoff), so processing is at-least-once; handlers must be
 *   idempotent (ours are, by seq or by id).
 * - A group with no committed offset for a partition starts at the beginning or at the end, as asked.
 */
export interface BusMessage {
  readonly key: string;
  readonly value: Buffer;
  readonly headers?: Readonly<Record<string, string>>;
  /**
   * Set when the memory of `value` belongs to an owner that reuses it (the splitter's ring of write
   * payloads): the owner may reuse it once every holder has released. The sender keeps its own
   * reference at least until send() settles. A driver that keeps a reference to `value` after send()
   * settles must retain() the lease while it stores the value and release() it exactly once when it no
   * longer does; a driver that copies or encodes the value before send() settles (the Kafka driver, the
   * in-process driver with 'copy' values) ignores the lease. A handler may use the value until it
   * settles; a consumer that keeps the value, or a view into it, beyond its handler's return must copy
   * it. ConsumedMessage extends BusMessage, so a consumed message may carry the lease it was sent with,
   * and a consumer that forwards the value to another topic must pass the lease on with it.
   */
  readonly lease?: BufferLease;
}

/** Reference counting for a value whose memory its owner reuses (see BusMessage.lease). */
export interface BufferLease {
  /**
   * One more holder. Only a holder, or someone while a holder is sure to keep its hold (a driver
   * during send()), may call it, so the count never climbs back from zero.
   */
  retain(): void;
  /** One holder fewer, exactly once per retain(); after the last, the owner may reuse the memory. */
  release(): void;
}

export interface ConsumedMessage extends BusMessage {
  readonly topic: string;
  readonly partition: number;
  /** Decimal string, as Kafka offsets are 64-bit. */
  readonly offset: string;
}

export interface MessageBatch {
  readonly topic: string;
  readonly partition: number;
  readonly messages: readonly ConsumedMessage[];
}

export interface TopicSpec {
  readonly topic: string;
  readonly partitions: number;
}

export interface BatchContext {
  /** Tells the group this member is alive during a long batch (a no-op where the driver needs none). */
  heartbeat(): Promise<void>;
  /** False once the consumer is stopping or the batch's partition has been revoked. */
  isActive(): boolean;
}

export type BatchHandler = (batch: MessageBatch, context: BatchContext) => Promise<void>;

export interface ConsumerOptions {
  readonly groupId: string;
  readonly topics: readonly string[];
  /** Where a group with no committed offset starts. Default 'earliest'. */
  readonly start?: 'earliest' | 'latest';
  /** Most messages in one batch. Default 500. */
  readonly maxBatchMessages?: number;
}

export interface BusProducer {
  /** Resolves once every message is stored by the bus (for Kafka: acknowledged by all in-sync replicas). */
  send(topic: string, messages: readonly BusMessage[]): Promise<void>;
}

export interface BusConsumer {
  /** Starts consuming; resolves once the consumer has joined its group. */
  run(handler: BatchHandler): Promise<void>;
  /** Stops after the batch in progress; its offsets are committed only if it completes. */
  stop(): Promise<void>;
}

export interface Bus {
  /** Whether messages survive a restart of this process. The in-process bus does not. */
  readonly durable: boolean;
  readonly driverName: string;
  ensureTopics(specs: readonly TopicSpec[]): Promise<void>;
  createProducer(): BusProducer;
  createConsumer(options: ConsumerOptions): BusConsumer;
  /** Stops every consumer this bus created and releases connections. */
  close(): Promise<void>;
}

export class BusError extends Error {
  override readonly name = 'BusError';
  constructor(
    message: string,
    readonly retriable: boolean,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
