import fc from 'fast-check';
import { murmur2, partitionForKey, toPositive } from './murmur2';

describe('murmur2', () => {
  // Apache Kafka's UtilsTest.testMurmur2, plus the empty input.
  it.each([
    ['21', -973932308],
    ['foobar', -790332482],
    ['a-little-bit-long-string', -985981536],
    ['a-little-bit-longer-string', -1486304829],
    ['lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8', -58897971],
    ['abc', 479470107],
    ['', 275646681],
  ])('hashes %j as Kafka does', (key, expected) => {
    expect(murmur2(Buffer.from(key))).toBe(expected);
  });

  // kafkajs' vectors for its Java-compatible partitioner, generated with the Java client.
  it.each([
    ['0', 971027396],
    ['1', -1993445489],
    ['128', -326012175],
    ['2187', -1508407203],
    ['16384', -325739742],
    ['78125', -1654490814],
    ['279936', 1462227128],
    ['823543', -2014198330],
    ['2097152', 607668903],
    ['4782969', -1182699775],
    ['10000000', -1830336757],
    ['19487171', -1603849305],
    ['35831808', -857013643],
    ['62748517', -1167431028],
    ['105413504', -381294639],
    ['170859375', -1658323481],
    ['100:48069', 1009543857],
  ])('hashes %j as the Java client does', (key, expected) => {
    expect(murmur2(Buffer.from(key))).toBe(expected);
  });

  it('hashes a Uint8Array view like the equivalent Buffer', () => {
    const backing = new Uint8Array([9, 9, ...Buffer.from('foobar'), 9]);
    expect(murmur2(backing.subarray(2, 8))).toBe(-790332482);
  });

  it('agrees with a straightforward 32-bit transcription for arbitrary bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        expect(murmur2(bytes)).toBe(referenceMurmur2(bytes));
      }),
    );
  });
});

describe('partitionForKey', () => {
  it('matches Kafka for a known key', () => {
    expect(partitionForKey('foobar', 50)).toBe(16);
    expect(partitionForKey('21', 8)).toBe(toPositive(-973932308) % 8);
  });

  it('clears the sign bit rather than negating', () => {
    expect(toPositive(-1)).toBe(0x7fffffff);
    expect(toPositive(-2147483648)).toBe(0);
    expect(toPositive(5)).toBe(5);
  });

  it('hashes the UTF-8 bytes of the key', () => {
    const key = 'vpg-é-日本';
    expect(partitionForKey(key, 1000)).toBe(toPositive(referenceMurmur2(Buffer.from(key, 'utf8'))) % 1000);
  });

  it('is stable and in range', () => {
    for (let i = 0; i < 1000; i++) {
      const p = partitionForKey(`vpg-${i}`, 12);
      expect(p).toBeGreaterThanOrEqual(0);
      expect(p).toBeLessThan(12);
      expect(partitionForKey(`vpg-${i}`, 12)).toBe(p);
    }
  });

  it('rejects a partition count that is not a positive integer', () => {
    expect(() => partitionForKey('k', 0)).toThrow(RangeError);
    expect(() => partitionForKey('k', 2.5)).toThrow(RangeError);
  });
});

/** Java's int semantics modelled with BigInt, independent of Math.imul and of Buffer's readers. */
function referenceMurmur2(data: Uint8Array): number {
  const int = (x: bigint): bigint => BigInt.asIntN(32, x);
  const ushr = (x: bigint, n: bigint): bigint => BigInt.asUintN(32, x) >> n;
  const m = BigInt(0x5bd1e995);
  const byte = (i: number): bigint => BigInt(data[i]!);
  const length = data.length;
  let h = int(BigInt(0x9747b28c) ^ BigInt(length));
  for (let i = 0; i + 4 <= length; i += 4) {
    let k = int(byte(i) + (byte(i + 1) << 8n) + (byte(i + 2) << 16n) + (byte(i + 3) << 24n));
    k = int(k * m);
    k = int(k ^ ushr(k, 24n));
    k = int(k * m);
    h = int(int(h * m) ^ k);
  }
  const tail = length - (length % 4);
  const remaining = length % 4;
  if (remaining === 3) h = int(h ^ (byte(tail + 2) << 16n));
  if (remaining >= 2) h = int(h ^ (byte(tail + 1) << 8n));
  if (remaining >= 1) h = int(int(h ^ byte(tail)) * m);
  h = int(h ^ ushr(h, 13n));
  h = int(h * m);
  h = int(h ^ ushr(h, 15n));
  return Number(h);
}
