import { resolve } from 'node:path';
import { z } from 'zod';

/**
 * The process configuration, read from the environment once at start. Every bad variable is named in
 * one error, so an operator fixes them all in one go. Nothing else in the code reads process.env.
 */
export interface AppConfig {
  /** Root of everything this process stores on disk: volumes, logs, journal segments, embedded Postgres. */
  readonly dataDir: string;
  /** External PostgreSQL server; null means: start an embedded server under dataDir. */
  readonly databaseUrl: string | null;
  /** Port for the embedded PostgreSQL server; 0 picks a free one. */
  readonly embeddedPostgresPort: number;
  readonly http: { readonly host: string; readonly port: number };
  /** Where the splitter serves protected volumes over NBD (port 0 picks a free one). */
  readonly nbd: { readonly host: string; readonly port: number };
  /** Where the recovery orchestrator serves point-in-time exports over NBD (port 0 picks a free one). */
  readonly recoveryNbd: { readonly host: string; readonly port: number };
  /** Create a demo VPG and drive a workload into it (the quick start). */
  readonly demo: boolean;
  readonly busPartitions: number;
  /**
   * How often the journal writer promotes writes older than each VPG's journal history into its
   * replica (CDP_PROMOTION_INTERVAL_SECONDS, default 30, at least 1).
   */
  readonly promotionIntervalSeconds: number;
}

const bool = z.enum(['true', 'false', '1', '0', 'yes', 'no']).transform((v) => v === 'true' || v === '1' || v === 'yes');
const port = z.coerce.number().int().min(0).max(65_535);

const envSchema = z.object({
  CDP_DATA_DIR: z.string().min(1).default('./data'),
  DATABASE_URL: z
    .string()
    .refine((v) => /^postgres(ql)?:\/\//.test(v), 'must be a postgres:// or postgresql:// URL')
    .optional(),
  CDP_EMBEDDED_PG_PORT: port.default(0),
  CDP_HTTP_HOST: z.string().min(1).default('127.0.0.1'),
  CDP_HTTP_PORT: port.default(8080),
  CDP_NBD_HOST: z.string().min(1).default('127.0.0.1'),
  // 10809 is the IANA port for NBD, which clients assume when a URI names none.
  CDP_NBD_PORT: port.default(10809),
  CDP_RECOVERY_NBD_HOST: z.string().min(1).default('127.0.0.1'),
  CDP_RECOVERY_NBD_PORT: port.default(10810),
  CDP_DEMO: bool.default(false),
  CDP_BUS_PARTITIONS: z.coerce.number().int().min(1).max(1024).default(8),
  CDP_PROMOTION_INTERVAL_SECONDS: z.coerce.number().int().min(1).max(86_400).default(30),
});

export const CONFIG_VARIABLES = Object.keys(envSchema.shape);

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(readonly problems: readonly string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
  }
}

export function loadConfig(env: Readonly<Record<string, string | undefined>>, overrides: Partial<AppConfig> = {}): AppConfig {
  // An empty variable means "not set", as in most deployment tools.
  const present = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const parsed = envSchema.safeParse(present);
  if (!parsed.success) {
    throw new ConfigError(parsed.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`));
  }
  const e = parsed.data;
  return {
    dataDir: resolve(e.CDP_DATA_DIR),
    databaseUrl: e.DATABASE_URL ?? null,
    embeddedPostgresPort: e.CDP_EMBEDDED_PG_PORT,
    http: { host: e.CDP_HTTP_HOST, port: e.CDP_HTTP_PORT },
    nbd: { host: e.CDP_NBD_HOST, port: e.CDP_NBD_PORT },
    recoveryNbd: { host: e.CDP_RECOVERY_NBD_HOST, port: e.CDP_RECOVERY_NBD_PORT },
    demo: e.CDP_DEMO,
    busPartitions: e.CDP_BUS_PARTITIONS,
    promotionIntervalSeconds: e.CDP_PROMOTION_INTERVAL_SECONDS,
    ...overrides,
  };
}

/** Injection token under which the composing application provides its AppConfig. */
export const APP_CONFIG = 'cdp:app-config';
