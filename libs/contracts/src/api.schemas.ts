import { z } from 'zod';
import { nameSchema, vpgSettingsSchema } from './schemas';

/** Request bodies of the HTTP API. Unknown keys are rejected so that a typo is an error, not a silent default. */
export const createVpgRequestSchema = z.strictObject({
  name: nameSchema,
  vms: z
    .array(
      z.strictObject({
        name: nameSchema,
        // The splitter instance whose host runs the VM (CDP_SPLITTER_HOST); left out: 'default'.
        host: z.string().optional(),
        volumes: z
          .array(
            z.strictObject({
              name: nameSchema,
              sizeBytes: z.number().int().positive(),
              blockSize: z.union([z.literal(512), z.literal(4096)]).default(512),
            }),
          )
          .min(1),
      }),
    )
    .min(1),
  settings: vpgSettingsSchema.partial().strict().default({}),
});
export type CreateVpgRequest = z.infer<typeof createVpgRequestSchema>;

/** A change of a VPG's settings: the ones named change, the others stay as they are. */
export const changeVpgSettingsRequestSchema = vpgSettingsSchema
  .partial()
  .strict()
  .refine((settings) => Object.keys(settings).length > 0, { message: 'name at least one setting to change' });
export type ChangeVpgSettingsRequest = z.infer<typeof changeVpgSettingsRequestSchema>;

export const taggedCheckpointRequestSchema = z.strictObject({
  name: z.string(),
});
export type TaggedCheckpointRequest = z.infer<typeof taggedCheckpointRequestSchema>;

export const applicationCheckpointRequestSchema = z.strictObject({
  name: z.string(),
  vmId: z.uuid(),
});
export type ApplicationCheckpointRequest = z.infer<typeof applicationCheckpointRequestSchema>;

/** Query of a protected-volume write: the byte offset, and whether the write is FUA. */
export const writeQuerySchema = z.strictObject({
  offset: z
    .string()
    .regex(/^\d+$/, 'offset must be a non-negative integer')
    .transform((s) => Number(s))
    .refine((n) => Number.isSafeInteger(n), 'offset is too large'),
  fua: z.enum(['0', '1', 'true', 'false']).optional().transform((v) => v === '1' || v === 'true'),
});

/**
 * Opening a point-in-time export at a time rather than a checkpoint: the volume as it was after the
 * last write captured at or before `at` (an ISO-8601 time with a zone or offset).
 */
export const pitExportAtRequestSchema = z.strictObject({
  volumeId: z.uuid(),
  at: z.iso.datetime({ offset: true }),
  writable: z.boolean().default(false),
});
export type PitExportAtRequest = z.infer<typeof pitExportAtRequestSchema>;
