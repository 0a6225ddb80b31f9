import { z } from 'zod';
import { CHECKPOINT_KINDS, HISTORY_LEVELS, MAX_NAME_LENGTH, SETTINGS_LIMITS, SITE_CONDITION_KINDS } from '@cdp/domain';

export const uuidSchema = z.uuid();
export const nameSchema = z.string().trim().min(1).max(MAX_NAME_LENGTH);

export const vpgSettingsSchema = z.object({
  journalHistorySeconds: z.number().int().min(SETTINGS_LIMITS.journalHistorySeconds.min).max(SETTINGS_LIMITS.journalHistorySeconds.max),
  checkpointIntervalSeconds: z
    .number()
    .int()
    .min(SETTINGS_LIMITS.checkpointIntervalSeconds.min)
    .max(SETTINGS_LIMITS.checkpointIntervalSeconds.max),
  historyWarningSeconds: z.number().int().min(0),
  historyAlertSeconds: z.number().int().min(0),
  // Absent from VPGs created before it existed; null: no limit.
  journalSizeLimitMb: z.number().int().min(SETTINGS_LIMITS.journalSizeLimitMb.min).max(SETTINGS_LIMITS.journalSizeLimitMb.max).nullable().optional(),
  // Absent from VPGs created before it existed: DEFAULT_VPG_SETTINGS' value applies.
  rpoAlertSeconds: z.number().int().min(SETTINGS_LIMITS.rpoAlertSeconds.min).max(SETTINGS_LIMITS.rpoAlertSeconds.max).optional(),
});

export const volumeSchema = z.object({
  id: uuidSchema,
  name: nameSchema,
  index: z.number().int().min(0).max(65_535),
  sizeBytes: z.number().int().positive(),
  blockSize: z.union([z.literal(512), z.literal(4096)]),
});

export const vmSchema = z.object({ id: uuidSchema, name: nameSchema, volumes: z.array(volumeSchema).min(1).readonly(), host: z.string().optional() });

export const vpgSchema = z.object({
  id: uuidSchema,
  name: nameSchema,
  vms: z.array(vmSchema).min(1).readonly(),
  settings: vpgSettingsSchema,
  createdAt: z.iso.datetime(),
});

export const checkpointKindSchema = z.enum(CHECKPOINT_KINDS);

export const checkpointSchema = z.object({
  id: uuidSchema,
  vpgId: uuidSchema,
  cut: z.number().int().min(0),
  kind: checkpointKindSchema,
  name: z.string().nullable(),
  vmId: z.string().nullable(),
  capturedAt: z.iso.datetime(),
});

export const historyLevelSchema = z.enum(HISTORY_LEVELS);

/** RPO as judged at one moment against the VPG's target, in seconds. */
export const rpoMeasureSchema = z.object({
  rpoSeconds: z.number().int().min(0),
  targetSeconds: z.number().int().min(0),
});

/** A host's name (a VM's `host`, a splitter's CDP_SPLITTER_HOST). */
export const hostSchema = z.string().regex(/^[a-z0-9][a-z0-9._-]{0,62}$/);

/** Longest message a protected-site condition carries (an error's text can be long). */
export const SITE_CONDITION_MESSAGE_MAX_LENGTH = 2000;

/** One condition of a protected site in trouble, as its splitter reports it (site-alerts.ts). */
export const siteConditionSchema = z.strictObject({
  kind: z.enum(SITE_CONDITION_KINDS),
  since: z.iso.datetime(),
  message: z.string().min(1).max(SITE_CONDITION_MESSAGE_MAX_LENGTH),
});

/** Journal history as judged at one moment: actual against configured, in seconds. */
export const historyMeasureSchema = z.object({
  actualSeconds: z.number().int().min(0),
  configuredSeconds: z.number().int().min(0),
});
