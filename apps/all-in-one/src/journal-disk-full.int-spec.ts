import { join } from 'node:path';
import { type Checkpoint } from '@cdp/domain';
import { diskFullFaults, randomBuffer, seededRandom, waitFor } from '@cdp/testing';
import { appWithProtectedVpg } from './all-in-one.test-app';

const KiB = 1024;
const VOLUME_BYTES = 1024 * KiB;

interface WriterStatus {
  readonly commitFailures: number;
  readonly failing: { readonly since: string; readonly failures: number; readonly error: string } | null;
}

/**
 * The recovery site's disk fills: the journal writer cannot append to the VPG's journal segments
 * (ENOSPC from their write calls, nothing else touched). The protected site goes on taking writes
 * (its log holds them), the journal writer says it is failing and retries, and once there is room it
 * journals everything in order: a checkpoint asked for during the outage is recorded after it, and
 * both checkpoints recover bit-exact.
 */
describe('a full journal disk, end to end', () => {
  const faults = diskFullFaults();
  const ctx = appWithProtectedVpg({ name: 'journal-full', vms: [{ name: 'vm', volumes: [{ name: 'disk', sizeBytes: VOLUME_BYTES }] }] });

  const writer = (): Promise<WriterStatus> => ctx.api.ok<WriterStatus>('GET', '/journal-writer/status');
  const tag = async (name: string, waitMs: number): Promise<{ status: string; checkpoint?: Checkpoint; checkpointId?: string }> =>
    ctx.api.ok('POST', `/vpgs/${ctx.vpg.id}/checkpoints?waitMs=${waitMs}`, { name });
  const image = async (checkpoint: Checkpoint): Promise<Buffer> => {
    const answer = await ctx.api.bytes(`/vpgs/${ctx.vpg.id}/checkpoints/${checkpoint.id}/volumes/${ctx.vpg.vms[0]!.volumes[0]!.id}/image`);
    expect(answer.status).toBe(200);
    return answer.data;
  };

  it('keeps the protected site writing, says it is failing, and journals everything in order once there is room', async () => {
    const volumeId = ctx.vpg.vms[0]!.volumes[0]!.id;
    const random = seededRandom(5);
    const model = Buffer.alloc(VOLUME_BYTES);
    const write = async (offset: number, length: number): Promise<void> => {
      const data = randomBuffer(random, length);
      await ctx.api.write(ctx.vpg.id, volumeId, offset, data);
      data.copy(model, offset);
    };
    await write(0, 64 * KiB);
    const before = await tag('before', 30_000);
    expect(before.status).toBe('recorded');
    const atBefore = Buffer.from(model);
    expect((await writer()).failing).toBeNull();

    faults.on = join(ctx.testApp.dataDir, 'journal', ctx.vpg.id) + '/';
    // The protected site acknowledges these: its log has room.
    for (let i = 0; i < 8; i++) {
      await write(i * 96 * KiB, 32 * KiB);
    }
    await waitFor(async () => (await writer()).failing !== null, { timeoutMs: 10_000, message: 'the journal writer never said it was failing' });
    const failing = (await writer()).failing!;
    expect(failing.error).toContain('ENOSPC');
    // Asked for during the outage: not recordable yet.
    const during = await tag('during', 1_000);
    expect(during.status).not.toBe('recorded');
    const atDuring = Buffer.from(model);

    faults.on = undefined;
    await waitFor(async () => (await writer()).failing === null, { timeoutMs: 30_000, message: 'journaling never resumed' });
    const status = await writer();
    expect(status.commitFailures).toBeGreaterThanOrEqual(failing.failures);
    // The checkpoint asked for during the outage is recorded now, after the writes before it.
    let recorded: Checkpoint | undefined;
    await waitFor(
      async () => {
        const page = await ctx.api.ok<Checkpoint[]>('GET', `/vpgs/${ctx.vpg.id}/checkpoints`);
        recorded = page.find((c) => c.name === 'during');
        return recorded !== undefined;
      },
      { timeoutMs: 30_000, message: 'the checkpoint asked for during the outage was never recorded' },
    );
    expect((await image(before.checkpoint!)).equals(atBefore)).toBe(true);
    expect((await image(recorded!)).equals(atDuring)).toBe(true);
    await write(900 * KiB, 4 * KiB);
    const after = await tag('after', 30_000);
    expect(after.status).toBe('recorded');
    expect((await image(after.checkpoint!)).equals(model)).toBe(true);
  });
});
