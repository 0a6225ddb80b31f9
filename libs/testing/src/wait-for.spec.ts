import { waitFor } from './wait-for';

describe('waitFor', () => {
  it('resolves as soon as the predicate holds, sync or async', async () => {
    let calls = 0;
    await waitFor(() => ++calls === 3, { timeoutMs: 1_000, intervalMs: 1, message: 'never three' });
    expect(calls).toBe(3);
    await waitFor(async () => Promise.resolve(true), { timeoutMs: 1_000, message: 'never true' });
  });

  it('throws with the message at the deadline', async () => {
    const started = Date.now();
    await expect(waitFor(() => false, { timeoutMs: 50, intervalMs: 5, message: 'the flag never rose' })).rejects.toThrow(
      'the flag never rose (still not true after 50 ms)',
    );
    expect(Date.now() - started).toBeGreaterThanOrEqual(50);
  });

  it('ends at once when the predicate throws', async () => {
    await expect(
      waitFor(
        () => {
          throw new Error('broken probe');
        },
        { timeoutMs: 10_000, message: 'unused' },
      ),
    ).rejects.toThrow('broken probe');
  });
});
