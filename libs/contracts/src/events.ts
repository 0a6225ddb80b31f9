import { z } from 'zod';
import { checkpointSchema, historyLevelSchema, historyMeasureSchema, uuidSchema, vpgSchema, vpgSettingsSchema } from './schemas';

/**
 * Domain events on TOPICS.events, JSON, keyed by VPG id. The envelope is versioned: consumers accept
 * the versions they know and skip (and count) the rest. Event types are past tense and stable; adding
 * a field is compatible, changing one is a new version.
 */
const envelope = {
  id: uuidSchema,
  version: z.literal(1),
  vpgId: uuidSchema,
  occurredAt: z.iso.datetime(),
};

export const domainEventSchema = z.discriminatedUnion('type', [
  z.object({ ...envelope, type: z.literal('vpg.created'), data: z.object({ vpg: vpgSchema }) }),
  z.object({ ...envelope, type: z.literal('vpg.settings-changed'), data: z.object({ settings: vpgSettingsSchema }) }),
  z.object({ ...envelope, type: z.literal('checkpoint.recorded'), data: z.object({ checkpoint: checkpointSchema }) }),
  // The article's "insert tagged CP" event: a person or a script tagged a checkpoint and it is now recoverable.
  z.object({ ...envelope, type: z.literal('checkpoint.tagged-inserted'), data: z.object({ checkpoint: checkpointSchema }) }),
  z.object({
    ...envelope,
    type: z.literal('journal.gap-detected'),
    data: z.object({ expectedSeq: z.number().int(), receivedSeq: z.number().int() }),
  }),
  z.object({
    ...envelope,
    type: z.literal('journal.corrupt-record-rejected'),
    data: z.object({ reason: z.string() }),
  }),
  // Journal history status (history-status.ts): every change of level; `from` is null on a VPG's first evaluation.
  z.object({
    ...envelope,
    type: z.literal('history.status-changed'),
    data: historyMeasureSchema.extend({ from: historyLevelSchema.nullable(), to: historyLevelSchema }),
  }),
  // The history fell to the alert threshold; stays raised until a 'history.alert-cleared' for the VPG.
  z.object({ ...envelope, type: z.literal('history.alert-raised'), data: historyMeasureSchema }),
  // The history recovered (or a new filling period began): the alert clears itself.
  z.object({ ...envelope, type: z.literal('history.alert-cleared'), data: historyMeasureSchema.extend({ to: historyLevelSchema }) }),
]);

export type DomainEventMessage = z.infer<typeof domainEventSchema>;
export type DomainEventType = DomainEventMessage['type'];
