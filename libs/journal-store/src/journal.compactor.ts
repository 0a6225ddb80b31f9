import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { type DataSource } from 'typeorm';
import { poolQuery, poolTransaction } from '@cdp/database';
import { mergeRows, type ExtentRow } from './journal-index.codec';
import { REPLICA_LOCK_CLASS } from './replica';

export interface CompactorOptions {
  /** A region is compacted once it has this many rows committed since its last compaction. */
  readonly minRows: number;
  /**
   * Packed bytes a merged row aims at. Below Postgres's TOAST threshold (about 2 KB a row), so a
   * region's rows stay in the heap, a few to a page, next to each other.
   */
  readonly targetBytes: number;
  /** Regions compacted in one transaction (one SELECT, one DELETE, one INSERT). */
  readonly regionsPerTransaction: number;
}

/** Longest stretch of merging done without letting the event loop run anything else. */
const SLICE_MS = 2;

export const DEFAULT_COMPACTOR_OPTIONS: CompactorOptions = { minRows: 16, targetBytes: 1800, regionsPerTransaction: 256 };

export interface CompactionResult {
  readonly vpgId: string;
  /** Regions whose rows were read. */
  readonly regions: number;
  /** Rows replaced, and the merged rows that replaced them. */
  readonly rowsMerged: number;
  readonly rowsWritten: number;
}

interface PendingRegion {
  readonly volumeIndex: number;
  readonly region: number;
  /** The first_seq of the oldest row committed since the region was last compacted. */
  fromSeq: number;
  rows: number;
}

interface PendingVpg {
  readonly vpgKey: number;
  readonly regions: Map<string, PendingRegion>;
  /** Whether rows committed before this process started have been looked for. */
  discovered: boolean;
}

/**
 * Merges a region's small journal_extents rows into few large ones. The journal writer commits one row
 * per (batch, volume, region), so under random writes every region gets a row of a few writes per
 * batch, interleaved in the heap with every other region's: a point-in-time view that loads a region
 * then reads one heap page per batch, and each row costs its tuple and index overhead for a handful
 * of writes. Compaction rewrites runs of consecutive small rows of one region (by first_seq) as rows
 * of about `targetBytes` of entries (see mergeRows: a row may span batches and segments), inserted
 * together, so the region's rows end up a few to a page and the per-row overhead is shared by a
 * hundred or more writes.
 *
 * Safe beside everything else that uses the index:
 * - a point-in-time view loads a region with one SELECT, so it sees the rows before or after a
 *   compaction's transaction, never a mix; both hold the same writes, and views filter them by seq;
 * - the journal writer only inserts rows of batches after applied_seq, and compaction reads only rows
 *   at or before the applied_seq it read in its transaction;
 * - promotion deletes and trims rows under the VPG's replica lock held exclusively; compaction holds
 *   it shared for its transaction, so the two never interleave (views hold it shared too).
 *
 * Which regions need it is known from the commits (`noteCommitted`); rows committed before the process
 * started are found once per VPG by one scan of its rows (`discover`).
 */
export class JournalCompactor {
  private readonly pending = new Map<string, PendingVpg>();

  constructor(
    private readonly dataSource: DataSource,
    private readonly options: CompactorOptions = DEFAULT_COMPACTOR_OPTIONS,
  ) {}

  /** The rows a commit of the VPG inserted (JournalStore calls this after the commit). */
  noteCommitted(vpgId: string, vpgKey: number, rows: readonly Pick<ExtentRow, 'volumeIndex' | 'region' | 'firstSeq' | 'entries'>[]): void {
    let vpg = this.pending.get(vpgId);
    if (!vpg) {
      vpg = { vpgKey, regions: new Map(), discovered: false };
      this.pending.set(vpgId, vpg);
    }
    for (const row of rows) {
      // A row big enough already is left alone: a region of only those never needs compacting.
      if (row.entries.length < this.smallBytes) {
        this.addPending(vpg, { volumeIndex: row.volumeIndex, region: row.region, fromSeq: row.firstSeq, rows: 1 });
      }
    }
  }

  private addPending(vpg: PendingVpg, added: PendingRegion): void {
    const known = vpg.regions.get(regionKey(added));
    if (known) {
      known.fromSeq = Math.min(known.fromSeq, added.fromSeq);
      known.rows += added.rows;
    } else {
      vpg.regions.set(regionKey(added), { ...added });
    }
  }

  /** VPGs with rows committed since their last compaction (or never looked at since the start). */
  vpgs(): string[] {
    return [...this.pending.keys()];
  }

  /**
   * Compacts the VPG's regions that have at least `minRows` new rows (every region with new rows when
   * `all`). The first call for a VPG in this process also finds rows committed before it started.
   */
  async compact(vpgId: string, options: { readonly all?: boolean } = {}): Promise<CompactionResult> {
    const vpg = this.pending.get(vpgId) ?? (await this.track(vpgId));
    if (!vpg) {
      return { vpgId, regions: 0, rowsMerged: 0, rowsWritten: 0 };
    }
    if (!vpg.discovered) {
      await this.discover(vpg);
    }
    const due = [...vpg.regions.values()].filter((r) => r.rows >= (options.all ? 2 : this.options.minRows));
    let rowsMerged = 0;
    let rowsWritten = 0;
    for (let i = 0; i < due.length; i += this.options.regionsPerTransaction) {
      const chunk = due.slice(i, i + this.options.regionsPerTransaction);
      // Taken out first: rows committed while this runs start a new count for their region.
      for (const region of chunk) {
        vpg.regions.delete(regionKey(region));
      }
      try {
        const done = await this.compactRegions(vpg.vpgKey, chunk);
        rowsMerged += done.rowsMerged;
        rowsWritten += done.rowsWritten;
      } catch (err) {
        for (const region of chunk) {
          this.addPending(vpg, region);
        }
        throw err;
      }
    }
    if (vpg.regions.size === 0 && vpg.discovered) {
      this.pending.delete(vpgId);
    }
    return { vpgId, regions: due.length, rowsMerged, rowsWritten };
  }

  private async track(vpgId: string): Promise<PendingVpg | undefined> {
    const rows = await poolQuery<{ vpg_key: number }>(this.dataSource, `SELECT vpg_key FROM journal_vpgs WHERE vpg_id = $1`, [vpgId]);
    const key = rows[0]?.vpg_key;
    if (key === undefined) {
      return undefined;
    }
    const vpg: PendingVpg = { vpgKey: key, regions: new Map(), discovered: false };
    this.pending.set(vpgId, vpg);
    return vpg;
  }

  /** Regions with small rows committed before this process started: one scan of the VPG's rows. */
  private async discover(vpg: PendingVpg): Promise<void> {
    const found = await poolQuery<{ volume_index: number; region: number; from_seq: string; rows: string }>(
      this.dataSource,
      `SELECT volume_index, region, min(first_seq) AS from_seq, count(*) AS rows FROM journal_extents
        WHERE vpg_key = $1 AND octet_length(entries) < $2
        GROUP BY volume_index, region HAVING count(*) > 1`,
      [vpg.vpgKey, this.smallBytes],
    );
    for (const row of found) {
      this.addPending(vpg, { volumeIndex: row.volume_index, region: row.region, fromSeq: Number(row.from_seq), rows: Number(row.rows) });
    }
    vpg.discovered = true;
  }

  /** A row this small is merged with its neighbours; a bigger one is left as it is. */
  private get smallBytes(): number {
    return Math.floor(this.options.targetBytes / 2);
  }

  private async compactRegions(vpgKey: number, regions: readonly PendingRegion[]): Promise<{ rowsMerged: number; rowsWritten: number }> {
    return poolTransaction(this.dataSource, async (tx) => {
      // Shared: promotion (exclusive) never runs beside it; views (shared) do.
      await tx.query(`SELECT pg_advisory_xact_lock_shared($1, $2)`, [REPLICA_LOCK_CLASS, vpgKey]);
      const applied = await tx.query<{ applied_seq: string }>(`SELECT applied_seq FROM journal_vpgs WHERE vpg_key = $1`, [vpgKey]);
      const upto = Number(applied[0]?.applied_seq ?? 0);
      // Each region's rows from the oldest new one on, and the row just before it if that is small (a
      // merged row with room left, or a small row of an earlier round), taken out in one statement:
      // the runs are put back merged, anything not merged is put back as it was.
      const rows = await tx.query<{ volume_index: number; region: number; first_seq: string; last_seq: string; segment: number; position: string; entries: Buffer }>(
        `WITH doomed AS (
           DELETE FROM journal_extents e
            USING (
              SELECT t.v, t.r, CASE WHEN prev.small THEN prev.first_seq ELSE t.f END AS f
                FROM unnest($2::smallint[], $3::int[], $4::bigint[]) AS t(v, r, f)
                LEFT JOIN LATERAL (
                  SELECT p.first_seq, octet_length(p.entries) < $6 AS small FROM journal_extents p
                   WHERE p.vpg_key = $1 AND p.volume_index = t.v AND p.region = t.r AND p.first_seq < t.f
                   ORDER BY p.first_seq DESC LIMIT 1
                ) AS prev ON true
            ) AS t
            WHERE e.vpg_key = $1 AND e.volume_index = t.v AND e.region = t.r AND e.first_seq >= t.f AND e.first_seq <= $5
           RETURNING e.volume_index, e.region, e.first_seq, e.last_seq, e.segment, e.position, e.entries
         )
         SELECT * FROM doomed ORDER BY volume_index, region, first_seq`,
        [vpgKey, regions.map((r) => r.volumeIndex), regions.map((r) => r.region), regions.map((r) => r.fromSeq), upto, this.smallBytes],
      );
      // Everything taken out goes back: runs of small rows merged, the rest unchanged.
      const back: ExtentRow[] = [];
      let rowsMerged = 0;
      let rowsWritten = 0;
      let run: ExtentRow[] = [];
      let runBytes = 0;
      const flush = (): void => {
        if (run.length >= 2) {
          back.push(mergeRows(run));
          rowsMerged += run.length;
          rowsWritten++;
        } else {
          back.push(...run);
        }
        run = [];
        runBytes = 0;
      };
      // The merging is CPU work on the event loop the splitter shares in the all-in-one: done in slices
      // of at most SLICE_MS, with I/O let in between (one round held it for 40 ms at a time, which
      // became the tail of the coordinated checkpoint stall: see docs/architecture.md).
      let slice = performance.now();
      for (const r of rows) {
        if (performance.now() - slice > SLICE_MS) {
          await yieldToEventLoop();
          slice = performance.now();
        }
        const row: ExtentRow = {
          volumeIndex: r.volume_index,
          region: r.region,
          firstSeq: Number(r.first_seq),
          lastSeq: Number(r.last_seq),
          segment: r.segment,
          position: Number(r.position),
          entries: r.entries,
        };
        const last = run[run.length - 1];
        if (last && (last.volumeIndex !== row.volumeIndex || last.region !== row.region)) {
          flush();
        }
        if (row.entries.length >= this.smallBytes) {
          flush();
          back.push(row);
          continue;
        }
        if (runBytes + row.entries.length > this.options.targetBytes) {
          flush();
        }
        run.push(row);
        runBytes += row.entries.length;
      }
      flush();
      if (back.length > 0) {
        await tx.execute(
          `INSERT INTO journal_extents (vpg_key, volume_index, region, first_seq, last_seq, segment, position, entries)
           SELECT $1, v, r, f, l, s, p, e FROM unnest($2::smallint[], $3::int[], $4::bigint[], $5::bigint[], $6::int[], $7::bigint[], $8::bytea[]) AS t(v, r, f, l, s, p, e)`,
          [
            vpgKey,
            back.map((m) => m.volumeIndex),
            back.map((m) => m.region),
            back.map((m) => m.firstSeq),
            back.map((m) => m.lastSeq),
            back.map((m) => m.segment),
            back.map((m) => m.position),
            back.map((m) => m.entries),
          ],
        );
      }
      return { rowsMerged, rowsWritten };
    });
  }
}

function regionKey(region: { readonly volumeIndex: number; readonly region: number }): string {
  return `${region.volumeIndex}:${region.region}`;
}
