import { Logger } from '@nestjs/common';
import { type BufferLease, type ConsumedMessage, InProcessBus } from '@cdp/bus';
import { TOPICS } from '@cdp/contracts';
import { waitFor } from '@cdp/testing';
import { TransportService } from './transport.service';

/** Counts holders as the splitter's payload ring does, starting with the sender's own hold. */
class CountingLease implements BufferLease {
  holders = 1;
  freed = 0;

  retain(): void {
    if (this.holders === 0) throw new Error('retained after the last release');
    this.holders++;
  }

  release(): void {
    if (this.holders === 0) throw new Error('released more often than retained');
    this.holders--;
    if (this.holders === 0) this.freed++;
  }
}

describe('TransportService', () => {
  it('forwards a handed-over value with its lease, so the memory is released only once both topics dropped it', async () => {
    jest.spyOn(Logger.prototype, 'log').mockImplementation(() => undefined);
    const bus = new InProcessBus({ defaultPartitions: 1, retention: 'consumed', values: 'hand-over' });
    const transport = new TransportService(bus);
    try {
      let open: () => void = () => undefined;
      const gate = new Promise<void>((resolve) => (open = resolve));
      const journaled: ConsumedMessage[] = [];
      await bus.createConsumer({ groupId: 'journal-writer', topics: [TOPICS.recoveryWrites] }).run(async (batch) => {
        journaled.push(...batch.messages);
        await gate;
      });
      await transport.onApplicationBootstrap();

      const value = Buffer.from('a record batch');
      const lease = new CountingLease();
      await bus.createProducer().send(TOPICS.protectedWrites, [{ key: 'vpg', value, lease, headers: { h: '1' } }]);
      lease.release();
      try {
        await waitFor(() => journaled.length === 1 && bus.partitionOffsets(TOPICS.protectedWrites, 0).low === '1', {
          timeoutMs: 2_000,
          intervalMs: 1,
          message: 'the value forwarded and dropped from the protected-site topic',
        });
        expect(journaled[0]?.value).toBe(value);
        expect(journaled[0]?.lease).toBe(lease);
        // Headers were never forwarded; that stays so.
        expect(journaled[0]?.headers).toBeUndefined();
        expect(lease.freed).toBe(0);
      } finally {
        open();
      }
      await waitFor(() => bus.partitionOffsets(TOPICS.recoveryWrites, 0).low === '1', {
        timeoutMs: 2_000,
        intervalMs: 1,
        message: 'the recovery-site topic to drop it',
      });
      expect([lease.freed, lease.holders]).toEqual([1, 0]);
      expect(transport.status()).toMatchObject({ forwardedMessages: 1, forwardedBytes: value.length });
    } finally {
      await transport.beforeApplicationShutdown();
      await bus.close();
      jest.restoreAllMocks();
    }
  });
});
