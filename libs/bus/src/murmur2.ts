/**
 * Kafka's key hash (org.apache.kafka.common.utils.Utils.murmur2) and its default partitioner's choice of
 * partition for a keyed message. The Java client, librdkafka's murmur2 partitioner and kafkajs 2.x's
 * default partitioner agree on it, so every driver sends a key to the same partition. (kafkajs 1.x's
 * default partitioner did not: it multiplied with doubles and lost bits.)
 */

const SEED = 0x9747b28c;
const M = 0x5bd1e995;
const R = 24;

/** Murmur2 of the bytes, as Java's signed 32-bit int. */
export function murmur2(data: Uint8Array): number {
  const bytes = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const length = bytes.length;
  // Java's int arithmetic wraps at 32 bits; Math.imul and the bitwise operators reproduce it exactly.
  let h = SEED ^ length;
  const tail = length & ~3;
  for (let i = 0; i < tail; i += 4) {
    let k = bytes.readInt32LE(i);
    k = Math.imul(k, M);
    k ^= k >>> R;
    k = Math.imul(k, M);
    h = Math.imul(h, M) ^ k;
  }
  const remaining = length & 3;
  if (remaining === 3) h ^= bytes.readUInt8(tail + 2) << 16;
  if (remaining >= 2) h ^= bytes.readUInt8(tail + 1) << 8;
  if (remaining >= 1) {
    h ^= bytes.readUInt8(tail);
    h = Math.imul(h, M);
  }
  h ^= h >>> 13;
  h = Math.imul(h, M);
  h ^= h >>> 15;
  return h | 0;
}

/** Kafka's toPositive: clears the sign bit rather than taking the absolute value, so MIN_VALUE maps to 0. */
export function toPositive(hash: number): number {
  return hash & 0x7fffffff;
}

/** The partition Kafka's default partitioner picks for a message with this key (UTF-8 encoded). */
export function partitionForKey(key: string, partitions: number): number {
  if (!Number.isInteger(partitions) || partitions < 1) {
    throw new RangeError(`partition count must be a positive integer, got ${partitions}`);
  }
  return toPositive(murmur2(Buffer.from(key, 'utf8'))) % partitions;
}
