import { PayloadRing, type PayloadLease } from './payload-ring';

describe('PayloadRing', () => {
  it('hands out regions in order and reuses the front once everything before the tail is released', () => {
    const ring = new PayloadRing(4096);
    const a = ring.acquire(1000) as PayloadLease;
    const b = ring.acquire(1000) as PayloadLease;
    const c = ring.acquire(1000) as PayloadLease;
    expect([a.start, b.start, c.start]).toEqual([0, 1024, 2048]);
    expect(a.data.length).toBe(1000);
    // 3072..4096 is left: 1024 bytes fit, 1025 do not (and the front is still held).
    expect(ring.acquire(1025)).toBeUndefined();
    // Released out of order: b waits for a, so the front is still not free.
    b.release();
    expect(ring.acquire(1025)).toBeUndefined();
    a.release();
    // a and b are behind the tail now: 2048 bytes at the front.
    const d = ring.acquire(2000) as PayloadLease;
    expect(d.start).toBe(0);
    expect(ring.acquire(100)).toBeUndefined();
    // c, the unused end behind it (skipped when d wrapped to the front), and d: the whole ring.
    expect(ring.stats()).toEqual({ capacityBytes: 4096, liveRegions: 2, liveBytes: 4096, served: 4, fallbacks: 3 });
    c.release();
    d.release();
    expect(ring.stats()).toMatchObject({ liveRegions: 0, liveBytes: 0 });
    expect((ring.acquire(4096) as PayloadLease).start).toBe(0);
  });

  it('never hands out a byte that a held region has, under random sizes and release orders', () => {
    let seed = 42;
    const random = (): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed / 0x80000000;
    };
    const capacity = 1 << 20;
    const ring = new PayloadRing(capacity);
    const held: { lease: PayloadLease; stamp: number }[] = [];
    let served = 0;
    let refused = 0;
    for (let step = 0; step < 20_000; step++) {
      if (random() < 0.55) {
        const size = 1 + Math.floor(random() ** 3 * capacity * 0.3);
        const lease = ring.acquire(size);
        if (!lease) {
          refused++;
          continue;
        }
        served++;
        expect(lease.end).toBeLessThanOrEqual(capacity);
        for (const other of held) {
          expect(lease.start >= other.lease.end || lease.end <= other.lease.start).toBe(true);
        }
        const stamp = step & 0xff;
        lease.data.fill(stamp);
        held.push({ lease, stamp });
      } else if (held.length > 0) {
        // Mostly the oldest, as the pipeline releases; sometimes any.
        const index = random() < 0.7 ? 0 : Math.floor(random() * held.length);
        const [{ lease, stamp }] = held.splice(index, 1) as [{ lease: PayloadLease; stamp: number }];
        expect(lease.data.every((byte) => byte === stamp)).toBe(true);
        lease.release();
      }
    }
    expect(served).toBeGreaterThan(5_000);
    expect(refused).toBeGreaterThan(0);
    for (const { lease } of held) {
      lease.release();
    }
    expect(ring.stats()).toMatchObject({ liveRegions: 0, liveBytes: 0 });
  });

  it('frees a region only when its last holder releases it, and refuses a release too many', () => {
    const ring = new PayloadRing(1024, { poison: true });
    const lease = ring.acquire(100) as PayloadLease;
    lease.data.fill(7);
    lease.retain();
    lease.release();
    // Still held by the first holder: neither reusable nor poisoned.
    expect(ring.acquire(1000)).toBeUndefined();
    expect(lease.data.every((byte) => byte === 7)).toBe(true);
    lease.release();
    expect(lease.data.every((byte) => byte === 0xdb)).toBe(true);
    expect(() => lease.release()).toThrow(/released more often than it was retained/);
    expect(() => lease.retain()).toThrow(/retained after its last holder released it/);
    expect(ring.acquire(1024)).toBeDefined();
  });

  it('refuses sizes it cannot hand out', () => {
    expect(() => new PayloadRing(10)).toThrow(/at least 64 bytes/);
    const ring = new PayloadRing(4096);
    expect(() => ring.acquire(0)).toThrow(/positive integer/);
    expect(() => ring.acquire(1.5)).toThrow(/positive integer/);
    expect(ring.acquire(4097)).toBeUndefined();
  });
});
