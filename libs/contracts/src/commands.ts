import { z } from 'zod';
import { checkpointKindSchema, uuidSchema } from './schemas';

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
  // Sent by the journal writer when it finds a gap: ship again every record from `fromSeq` on.
  z.object({ type: z.literal('replication.replay'), vpgId: uuidSchema, fromSeq: z.number().int().min(1), reason: z.string() }),
]);

export type SplitterCommand = z.infer<typeof splitterCommandSchema>;

/** TOPICS.journalProgress: every write with seq <= appliedSeq is durable in the journal and indexed. */
export const journalProgressSchema = z.object({ vpgId: uuidSchema, appliedSeq: z.number().int().min(0), at: z.iso.datetime() });
export type JournalProgress = z.infer<typeof journalProgressSchema>;
