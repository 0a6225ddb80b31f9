import { z } from 'zod';
import { SITE_CONDITION_KINDS } from '@cdp/domain';
import { checkpointSchema, historyLevelSchema, historyMeasureSchema, hostSchema, rpoMeasureSchema, siteConditionSchema, uuidSchema, vpgSchema, vpgSettingsSchema } from './schemas';

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
  // The splitter could not ship seqs the journal lacked (its log no longer held them) and restarted the
  // order at `seq` (RecordKind.Restart): `voidFrom` to `seq` - 1 are void, a full resync of the volumes
  // follows, and no checkpoint is recorded until it is complete. `member` is set in a VPG with several.
  z.object({
    ...envelope,
    type: z.literal('journal.order-restarted'),
    data: z.object({ seq: z.number().int(), voidFrom: z.number().int(), resyncId: z.string(), reason: z.string(), member: z.string().nullable() }),
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
  // Nothing newer than the VPG's RPO target is journaled (rpo-status.ts); stays raised until an 'rpo.alert-cleared'.
  z.object({ ...envelope, type: z.literal('rpo.alert-raised'), data: rpoMeasureSchema }),
  // Something newer was journaled: the RPO is within the target again.
  z.object({ ...envelope, type: z.literal('rpo.alert-cleared'), data: rpoMeasureSchema }),
  // A splitter's report of the VPG's conditions on its host: every one it has now, none when all is
  // well (site-alerts.ts). Sent when the set changes and when the splitter opens the VPG.
  z.object({
    ...envelope,
    type: z.literal('site.conditions-reported'),
    data: z.object({
      host: hostSchema,
      // The splitter process: reports are ordered by reportedAt; the instance tells a restart apart in logs.
      instance: uuidSchema,
      reportedAt: z.iso.datetime(),
      conditions: z.array(siteConditionSchema).max(SITE_CONDITION_KINDS.length),
    }),
  }),
  // The recovery site opened an alert from a report; stays raised until a 'site.alert-cleared' for the VPG, host and kind.
  z.object({ ...envelope, type: z.literal('site.alert-raised'), data: siteConditionSchema.extend({ host: hostSchema }) }),
  // A report no longer had the condition: the alert clears itself.
  z.object({
    ...envelope,
    type: z.literal('site.alert-cleared'),
    data: z.object({ host: hostSchema, kind: siteConditionSchema.shape.kind, raisedAt: z.iso.datetime() }),
  }),
]);

export type DomainEventMessage = z.infer<typeof domainEventSchema>;
export type DomainEventType = DomainEventMessage['type'];
