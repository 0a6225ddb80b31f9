import { z } from 'zod';
import { checkpointKindSchema, hostSchema, uuidSchema } from './schemas';

const epochSchema = z.number().int().min(1);
/** Longest reason an operator may give for a forced resync (it goes into logs and the status). */
export const RESYNC_REASON_MAX_LENGTH = 500;

/** Commands on TOPICS.commands, JSON, keyed by VPG id; the splitter that owns the VPG carries them out. */
export const splitterCommandSchema = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('checkpoint.insert'),
    vpgId: uuidSchema,
    checkpointId: uuidSchema,
    kind: checkpointKindSchema,
    name: z.string().nullable(),
    vmId: z.string().nullable(),
    requestedAt: z.iso.datetime(),
  }),
  // Sent by the journal writer when it finds a gap: ship again every record from `fromSeq` on. With
  // `member`, only that member's splitter replays (its own seqs); without, the VPG's only member.
  z.object({
    type: z.literal('replication.replay'),
    vpgId: uuidSchema,
    fromSeq: z.number().int().min(1),
    reason: z.string(),
    member: hostSchema.optional(),
  }),
  // Coordinated checkpoints of a VPG with several members (see docs/architecture.md, "Coordinated
  // checkpoints"). prepare: every member holds new writes and reports on TOPICS.barrier; cut: each
  // member named in `holders` (with the instance that reported) inserts its marker and releases;
  // abort: each member voids the epoch and releases. Epochs increase per VPG.
  z.object({
    type: z.literal('checkpoint.prepare'),
    vpgId: uuidSchema,
    epoch: epochSchema,
    checkpointId: uuidSchema,
    kind: checkpointKindSchema,
    name: z.string().nullable(),
    vmId: z.string().nullable(),
    members: z.array(hostSchema).min(2),
    holdTimeoutMs: z.number().int().min(1).max(60_000),
    requestedAt: z.iso.datetime(),
  }),
  z.object({
    type: z.literal('checkpoint.cut'),
    vpgId: uuidSchema,
    epoch: epochSchema,
    checkpointId: uuidSchema,
    holders: z.array(z.object({ member: hostSchema, instance: z.string().min(1) })).min(1),
  }),
  z.object({ type: z.literal('checkpoint.abort'), vpgId: uuidSchema, epoch: epochSchema, checkpointId: uuidSchema, reason: z.string() }),
  // An operator forces a resync of some volumes (null: all) of the VPG: each splitter of the VPG reads
  // back the listed volumes it captures and ships them as ordinary writes (see forced-resync.ts).
  z.object({
    type: z.literal('replication.resync'),
    vpgId: uuidSchema,
    resyncId: uuidSchema,
    volumeIds: z.array(uuidSchema).min(1).max(1024).nullable(),
    requestedAt: z.iso.datetime(),
    reason: z.string().max(RESYNC_REASON_MAX_LENGTH),
  }),
]);

export type SplitterCommand = z.infer<typeof splitterCommandSchema>;

/**
 * TOPICS.journalProgress: every write with seq <= appliedSeq is durable in the journal and indexed.
 * With `member`, the seqs are that member's own (a VPG with several members).
 */
export const journalProgressSchema = z.object({ vpgId: uuidSchema, appliedSeq: z.number().int().min(0), at: z.iso.datetime(), member: hostSchema.optional() });
export type JournalProgress = z.infer<typeof journalProgressSchema>;

/**
 * TOPICS.barrier, splitter -> coordinator (the checkpoint scheduler): this member holds new writes for
 * `epoch`. `instance` names the splitter process, so a cut reaches only a process that has held
 * continuously since it reported (a restarted one voids the epoch instead).
 */
export const barrierHeldSchema = z.object({
  type: z.literal('checkpoint.held'),
  vpgId: uuidSchema,
  epoch: epochSchema,
  member: hostSchema,
  instance: z.string().min(1),
});
export type BarrierHeld = z.infer<typeof barrierHeldSchema>;
