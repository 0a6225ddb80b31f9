import { join, resolve } from 'node:path';
import { z } from 'zod';

/** An NBD server's TCP address, or the Unix socket that replaces it (null: TCP). */
export interface NbdListen {
  readonly host: string;
  readonly port: number;
  readonly socket: string | null;
}

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
  /**
   * Where the splitter serves protected volumes over NBD: TCP (port 0 picks a free one), or with
   * `socket` (CDP_NBD_SOCKET) a Unix domain socket on this host instead.
   */
  readonly nbd: NbdListen;
  /** Where the recovery orchestrator serves point-in-time exports over NBD (CDP_RECOVERY_NBD_SOCKET likewise). */
  readonly recoveryNbd: NbdListen;
  /**
   * TLS for both NBD servers (CDP_NBD_TLS_CERT and CDP_NBD_TLS_KEY, PEM files; null: in the clear).
   * With it every client must start TLS before anything else; with `ca` (CDP_NBD_TLS_CA) a client must
   * also show a certificate that CA signed. Or pre-shared keys instead of certificates (CDP_NBD_TLS_PSK_FILE,
   * `identity:hexkey` lines): a client must hold its identity's key. The files are read when the
   * servers start (the PSK file again whenever it changes).
   */
  readonly nbdTls: { readonly cert: string; readonly key: string; readonly ca: string | null } | { readonly pskFile: string } | null;
  /** Create a demo VPG and drive a workload into it (the quick start). */
  readonly demo: boolean;
  readonly busPartitions: number;
  /**
   * How often the journal writer promotes writes older than each VPG's journal history into its
   * replica (CDP_PROMOTION_INTERVAL_SECONDS, default 30, at least 1).
   */
  readonly promotionIntervalSeconds: number;
  /**
   * Group commit in the journal writer (CDP_JOURNAL_COMMIT_INTERVAL_MS, default 25, 0 to 1000): it takes
   * a batch off the bus at most once in this time, so a busy journal commits less often and more at a
   * time. An idle journal is not held. See CommitPacer in the journal writer.
   */
  readonly journalCommitIntervalMs: number;
  /**
   * Where the journal lives (CDP_JOURNAL_DIR, default <dataDir>/journal): the journal writer writes it,
   * the recovery orchestrator reads it. Separate processes with separate data directories share it.
   */
  readonly journalDir: string;
  /**
   * The host this splitter runs on (CDP_SPLITTER_HOST, default 'default'): it captures the volumes of
   * the VMs placed on this host (a VM's `host`; VMs that name none are on 'default').
   */
  readonly splitterHost: string;
  /**
   * Bytes of memory the splitter receives NBD write payloads into and reuses (CDP_PAYLOAD_RING_MB,
   * default 256; 0: a fresh buffer per write). See PayloadRing for why.
   */
  readonly payloadRingBytes: number;
  /**
   * Most bytes each VPG's splitter log may hold before the journal confirms them
   * (CDP_SPLITTER_LOG_LIMIT_MB, default 8192; 0: no limit but the disk). Beyond it the splitter goes
   * into degraded mode: it tracks dirty regions instead of logging writes, and syncs them later.
   */
  readonly splitterLogLimitBytes: number | undefined;
  /**
   * How long a flush waits for the bus to acknowledge its writes before it completes durable on the
   * protected site only (CDP_SPLITTER_FLUSH_LINK_WAIT_S, default 10; 0: it waits for as long as it
   * takes, which stalls a VM's flushes for as long as the link is down).
   */
  readonly splitterFlushLinkWaitMs: number | undefined;
  /**
   * Overwrite payload ring regions the moment their last holder releases them
   * (CDP_POISON_RELEASED_PAYLOADS, default false): a check for tests, which the Jest configuration
   * turns on, at the cost of a memset per large write.
   */
  readonly poisonReleasedPayloads: boolean;
  readonly bus: BusConfig;
}

/** Which bus driver connects this process to the others (CDP_BUS). */
export type BusConfig = InProcessBusConfig | KafkaBusConfig;

/** Everything in one process: the all-in-one, or a standalone service that only talks to itself. */
export interface InProcessBusConfig {
  readonly driver: 'in-process';
}

export interface KafkaBusConfig {
  readonly driver: 'kafka';
  /** host:port of the brokers to bootstrap from (CDP_KAFKA_BROKERS, comma-separated). */
  readonly brokers: readonly string[];
  /** CDP_KAFKA_CLIENT_ID, default continuum-<service>. */
  readonly clientId: string | null;
  /** Replication factor of topics this process creates; null: the broker's default. */
  readonly replicationFactor: number | null;
  /** 'create': CreateTopics at start; 'broker-auto-creates': the broker makes them (with its own partition count). */
  readonly topicCreation: 'create' | 'broker-auto-creates';
  readonly compression: 'none' | 'gzip';
  /** The idempotent producer (CDP_KAFKA_IDEMPOTENT, default true); brokers without InitProducerId need false. */
  readonly idempotent: boolean;
  /**
   * Consumer group session timeout (CDP_KAFKA_SESSION_TIMEOUT_MS, default 30000): how long a member that
   * died without leaving (kill -9) holds its partitions before the group rebalances without it.
   */
  readonly sessionTimeoutMs: number;
  /** Longest a fetch waits for new data (CDP_KAFKA_MAX_WAIT_MS, default 1000): bounds each hop's idle latency. */
  readonly maxWaitMs: number;
}

const bool = z.enum(['true', 'false', '1', '0', 'yes', 'no']).transform((v) => v === 'true' || v === '1' || v === 'yes');
const port = z.coerce.number().int().min(0).max(65_535);
// sun_path holds 108 bytes with its terminating NUL; the length counted is the path as bound (absolute).
const socketPath = z
  .string()
  .min(1)
  .refine((path) => Buffer.byteLength(resolve(path)) <= 107, { message: 'a Unix socket path must be at most 107 bytes long (absolute)' });
// host:port, the host a name, an IPv4 address or a bracketed IPv6 address.
const BROKER = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([1-9]\d{0,4})$/;

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
  CDP_NBD_SOCKET: socketPath.optional(),
  CDP_RECOVERY_NBD_SOCKET: socketPath.optional(),
  CDP_NBD_TLS_CERT: z.string().min(1).optional(),
  CDP_NBD_TLS_KEY: z.string().min(1).optional(),
  CDP_NBD_TLS_CA: z.string().min(1).optional(),
  CDP_NBD_TLS_PSK_FILE: z.string().min(1).optional(),
  CDP_DEMO: bool.default(false),
  CDP_BUS_PARTITIONS: z.coerce.number().int().min(1).max(1024).default(8),
  CDP_PROMOTION_INTERVAL_SECONDS: z.coerce.number().int().min(1).max(86_400).default(30),
  CDP_JOURNAL_COMMIT_INTERVAL_MS: z.coerce.number().int().min(0).max(1_000).default(25),
  CDP_JOURNAL_DIR: z.string().min(1).optional(),
  CDP_SPLITTER_HOST: z
    .string()
    .regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, "must be 1 to 63 of lower-case letters, digits, '.', '_' or '-', starting with a letter or digit")
    .default('default'),
  // 4096 MiB is the largest Buffer Node allocates: a larger ring would only fail when the first VPG opens.
  CDP_PAYLOAD_RING_MB: z.coerce.number().int().min(0).max(4096).default(256),
  CDP_POISON_RELEASED_PAYLOADS: bool.default(false),
  // At least four of the log's 64 MiB segments, so that it can shrink to half its limit by whole segments.
  CDP_SPLITTER_LOG_LIMIT_MB: z.coerce
    .number()
    .int()
    .refine((mb) => mb === 0 || (mb >= 256 && mb <= 1024 * 1024), 'must be 0 (no limit) or from 256 to 1048576')
    .default(8192),
  CDP_SPLITTER_FLUSH_LINK_WAIT_S: z.coerce.number().int().min(0).max(86_400).default(10),
  CDP_BUS: z.enum(['in-process', 'kafka']).default('in-process'),
  CDP_KAFKA_BROKERS: z
    .string()
    .transform((v) => v.split(',').map((b) => b.trim()).filter((b) => b.length > 0))
    .refine((list) => list.length > 0 && list.every((b) => BROKER.test(b)), 'must be a comma-separated list of host:port')
    .optional(),
  CDP_KAFKA_CLIENT_ID: z.string().regex(/^[A-Za-z0-9._-]{1,255}$/, 'must be letters, digits, dot, underscore or dash').optional(),
  CDP_KAFKA_REPLICATION_FACTOR: z.coerce.number().int().min(1).max(32).optional(),
  CDP_KAFKA_TOPIC_CREATION: z.enum(['create', 'broker-auto-creates']).default('create'),
  CDP_KAFKA_COMPRESSION: z.enum(['none', 'gzip']).default('none'),
  CDP_KAFKA_IDEMPOTENT: bool.default(true),
  CDP_KAFKA_SESSION_TIMEOUT_MS: z.coerce.number().int().min(1_000).max(3_600_000).default(30_000),
  CDP_KAFKA_MAX_WAIT_MS: z.coerce.number().int().min(1).max(60_000).default(1_000),
});

export const CONFIG_VARIABLES = Object.keys(envSchema.shape);

/**
 * A failure at start that the operator fixes from its message alone (a file a setting names, an
 * address or socket path that cannot be used): the process prints the message without a stack and
 * exits 2, as for a bad variable, after stopping what it had started.
 */
export class StartupError extends Error {
  override readonly name = 'StartupError';

  /** The failure of a start-up step whose message already says what to change. */
  static of(err: unknown): StartupError {
    return new StartupError(err instanceof Error ? err.message : String(err), { cause: err });
  }
}

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
  const problems = parsed.success ? [] : parsed.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`);
  if (present['CDP_BUS'] === 'kafka' && present['CDP_KAFKA_BROKERS'] === undefined) {
    problems.push('CDP_KAFKA_BROKERS: required when CDP_BUS=kafka');
  }
  if ((present['CDP_NBD_TLS_CERT'] === undefined) !== (present['CDP_NBD_TLS_KEY'] === undefined)) {
    problems.push('CDP_NBD_TLS_CERT, CDP_NBD_TLS_KEY: set both (the certificate and its key) or neither');
  }
  if (present['CDP_NBD_TLS_CA'] !== undefined && present['CDP_NBD_TLS_CERT'] === undefined && present['CDP_NBD_TLS_PSK_FILE'] === undefined) {
    problems.push('CDP_NBD_TLS_CA: checks client certificates over TLS, which needs CDP_NBD_TLS_CERT and CDP_NBD_TLS_KEY');
  }
  for (const [socket, host, port] of [
    ['CDP_NBD_SOCKET', 'CDP_NBD_HOST', 'CDP_NBD_PORT'],
    ['CDP_RECOVERY_NBD_SOCKET', 'CDP_RECOVERY_NBD_HOST', 'CDP_RECOVERY_NBD_PORT'],
  ] as const) {
    const tcp = [host, port].filter((name) => present[name] !== undefined);
    if (present[socket] !== undefined && tcp.length > 0) {
      problems.push(`${socket}: a Unix socket replaces TCP; unset ${tcp.join(', ')} or ${socket}`);
    }
  }
  const volumesSocket = present['CDP_NBD_SOCKET'];
  const exportsSocket = present['CDP_RECOVERY_NBD_SOCKET'];
  if (volumesSocket !== undefined && exportsSocket !== undefined && resolve(volumesSocket) === resolve(exportsSocket)) {
    problems.push('CDP_NBD_SOCKET, CDP_RECOVERY_NBD_SOCKET: the two NBD servers need two sockets');
  }
  if (present['CDP_NBD_TLS_PSK_FILE'] !== undefined) {
    const x509 = ['CDP_NBD_TLS_CERT', 'CDP_NBD_TLS_KEY', 'CDP_NBD_TLS_CA'].filter((name) => present[name] !== undefined);
    if (x509.length > 0) {
      problems.push(`CDP_NBD_TLS_PSK_FILE: pre-shared keys replace certificates; unset ${x509.join(', ')} or CDP_NBD_TLS_PSK_FILE`);
    }
  }
  if (!parsed.success || problems.length > 0) {
    throw new ConfigError(problems);
  }
  const e = parsed.data;
  const dataDir = resolve(e.CDP_DATA_DIR);
  return {
    dataDir,
    databaseUrl: e.DATABASE_URL ?? null,
    embeddedPostgresPort: e.CDP_EMBEDDED_PG_PORT,
    http: { host: e.CDP_HTTP_HOST, port: e.CDP_HTTP_PORT },
    nbd: { host: e.CDP_NBD_HOST, port: e.CDP_NBD_PORT, socket: e.CDP_NBD_SOCKET === undefined ? null : resolve(e.CDP_NBD_SOCKET) },
    recoveryNbd: {
      host: e.CDP_RECOVERY_NBD_HOST,
      port: e.CDP_RECOVERY_NBD_PORT,
      socket: e.CDP_RECOVERY_NBD_SOCKET === undefined ? null : resolve(e.CDP_RECOVERY_NBD_SOCKET),
    },
    nbdTls:
      e.CDP_NBD_TLS_PSK_FILE !== undefined
        ? { pskFile: resolve(e.CDP_NBD_TLS_PSK_FILE) }
        : e.CDP_NBD_TLS_CERT !== undefined && e.CDP_NBD_TLS_KEY !== undefined
          ? { cert: resolve(e.CDP_NBD_TLS_CERT), key: resolve(e.CDP_NBD_TLS_KEY), ca: e.CDP_NBD_TLS_CA === undefined ? null : resolve(e.CDP_NBD_TLS_CA) }
          : null,
    demo: e.CDP_DEMO,
    busPartitions: e.CDP_BUS_PARTITIONS,
    promotionIntervalSeconds: e.CDP_PROMOTION_INTERVAL_SECONDS,
    journalCommitIntervalMs: e.CDP_JOURNAL_COMMIT_INTERVAL_MS,
    journalDir: e.CDP_JOURNAL_DIR === undefined ? join(dataDir, 'journal') : resolve(e.CDP_JOURNAL_DIR),
    splitterHost: e.CDP_SPLITTER_HOST,
    payloadRingBytes: e.CDP_PAYLOAD_RING_MB * 1024 * 1024,
    poisonReleasedPayloads: e.CDP_POISON_RELEASED_PAYLOADS,
    splitterLogLimitBytes: e.CDP_SPLITTER_LOG_LIMIT_MB === 0 ? undefined : e.CDP_SPLITTER_LOG_LIMIT_MB * 1024 * 1024,
    splitterFlushLinkWaitMs: e.CDP_SPLITTER_FLUSH_LINK_WAIT_S === 0 ? undefined : e.CDP_SPLITTER_FLUSH_LINK_WAIT_S * 1000,
    bus:
      e.CDP_BUS === 'kafka'
        ? {
            driver: 'kafka',
            brokers: e.CDP_KAFKA_BROKERS ?? [],
            clientId: e.CDP_KAFKA_CLIENT_ID ?? null,
            replicationFactor: e.CDP_KAFKA_REPLICATION_FACTOR ?? null,
            topicCreation: e.CDP_KAFKA_TOPIC_CREATION,
            compression: e.CDP_KAFKA_COMPRESSION,
            idempotent: e.CDP_KAFKA_IDEMPOTENT,
            sessionTimeoutMs: e.CDP_KAFKA_SESSION_TIMEOUT_MS,
            maxWaitMs: e.CDP_KAFKA_MAX_WAIT_MS,
          }
        : { driver: 'in-process' },
    ...overrides,
  };
}

/** Injection token under which the composing application provides its AppConfig. */
export const APP_CONFIG = 'cdp:app-config';
