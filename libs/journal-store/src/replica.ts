import { closeSync, fsync as fsyncCb, openSync } from 'node:fs';
import { open, readFile, rename, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { JournalStore } from './journal.store';

const fsync = promisify(fsyncCb);

/**
 * The replica of a VPG: each volume as of the journal's oldest retained point. It lives next to the
 * VPG's journal segments, in a subdirectory SegmentLog never looks at:
 *
 *   <journal root>/<vpgId>/replica/<volumeIndex>.img
 *       One sparse file per volume, exactly the volume's size (extended with ftruncate when created),
 *       holding every journal write with seq <= journal_vpgs.replica_seq applied in seq order. A
 *       missing file means nothing has been promoted into that volume yet: all zeros.
 *   <journal root>/<vpgId>/replica/promoting.json
 *       The promotion intent, `{"fromSeq": <replica_seq when it started>, "toSeq": <target seq>}`,
 *       written durably before a promotion changes a byte of the replica. While toSeq > replica_seq
 *       the promotion is under way or was interrupted: the replica may already hold writes up to
 *       toSeq, so no image at a cut <= toSeq may be read from it, and the next promotion must promote
 *       at least through toSeq. Once its transaction commits replica_seq = toSeq and the intent is
 *       finished; it is left in place (removing it outside the lock could remove a newer promotion's
 *       intent) and replaced or removed by the next promotion, under the lock.
 *
 * Who may touch the replica is decided by a PostgreSQL advisory lock per VPG, keyed
 * (REPLICA_LOCK_CLASS, journal_vpgs.vpg_key): image readers hold it shared for as long as they read,
 * the promoter holds it exclusively while it changes the replica and commits the new replica_seq.
 */
export const REPLICA_DIR_NAME = 'replica';

/** First key of the two-key advisory lock guarding a VPG's replica ('CDPR'); the second is vpg_key. */
export const REPLICA_LOCK_CLASS = 0x43445052;

export interface PromotionIntent {
  /** journal_vpgs.replica_seq when the promotion started. */
  readonly fromSeq: number;
  /** The replica may hold writes up to and including this seq. */
  readonly toSeq: number;
}

const INTENT_FILE = 'promoting.json';

export function replicaDir(rootDir: string, vpgId: string): string {
  return join(JournalStore.segmentDir(rootDir, vpgId), REPLICA_DIR_NAME);
}

export function replicaFile(rootDir: string, vpgId: string, volumeIndex: number): string {
  return join(replicaDir(rootDir, vpgId), `${volumeIndex}.img`);
}

/** Opens a volume's replica file read-only, or returns undefined when there is none (all zeros). */
export async function openReplicaForReading(rootDir: string, vpgId: string, volumeIndex: number): Promise<FileHandle | undefined> {
  try {
    return await open(replicaFile(rootDir, vpgId, volumeIndex), 'r');
  } catch (err) {
    if (isNotFound(err)) {
      return undefined;
    }
    throw err;
  }
}

/** The intent of a promotion that is under way or was interrupted, if any. A damaged file throws. */
export async function readPromotionIntent(rootDir: string, vpgId: string): Promise<PromotionIntent | undefined> {
  let text: string;
  try {
    text = await readFile(join(replicaDir(rootDir, vpgId), INTENT_FILE), 'utf8');
  } catch (err) {
    if (isNotFound(err)) {
      return undefined;
    }
    throw err;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  if (!isIntent(parsed)) {
    // It is written by rename, so it is whole or absent; anything else is damage. Refusing is safe:
    // a reader cannot tell which cuts the replica is still good for.
    throw new Error(`promotion intent of VPG ${vpgId} is damaged: ${JSON.stringify(text.slice(0, 200))}`);
  }
  return parsed;
}

/**
 * Makes the intent durable before the replica changes: written to a temporary file, fdatasynced,
 * renamed over the old one, and the directory fsynced, so after any crash it is either the old
 * intent or this one, never a torn file, and never missing while the replica holds newer bytes.
 */
export async function writePromotionIntent(rootDir: string, vpgId: string, intent: PromotionIntent): Promise<void> {
  const dir = replicaDir(rootDir, vpgId);
  const tmp = join(dir, `${INTENT_FILE}.tmp`);
  const handle = await open(tmp, 'w', 0o644);
  try {
    await handle.writeFile(JSON.stringify({ fromSeq: intent.fromSeq, toSeq: intent.toSeq }));
    await handle.datasync();
  } finally {
    await handle.close();
  }
  await rename(tmp, join(dir, INTENT_FILE));
  await fsyncDir(dir);
}

/**
 * Removes a finished intent (toSeq <= replica_seq), under the exclusive lock. Not synced: if it comes
 * back after a power loss it is still finished, and ignored.
 */
export async function clearPromotionIntent(rootDir: string, vpgId: string): Promise<void> {
  await rm(join(replicaDir(rootDir, vpgId), INTENT_FILE), { force: true });
}

export async function fsyncDir(dir: string): Promise<void> {
  const fd = openSync(dir, 'r');
  try {
    await fsync(fd);
  } finally {
    closeSync(fd);
  }
}

function isIntent(value: unknown): value is PromotionIntent {
  if (typeof value !== 'object' || value === null) {
    return false;
  }
  const v = value as Record<string, unknown>;
  return Number.isSafeInteger(v['fromSeq']) && Number.isSafeInteger(v['toSeq']);
}

function isNotFound(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === 'ENOENT';
}
