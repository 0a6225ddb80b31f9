import { type MigrationInterface, type QueryRunner } from 'typeorm';

/**
 * The journal index at scale: one row per committed batch and one per (batch, volume, 64 MiB region)
 * instead of one per write, so Postgres holds a few rows per thousands of writes and a point-in-time
 * view loads only the regions it reads. The packed `entries` layout is defined in
 * libs/journal-store/src/journal-index.codec.ts.
 *
 * Existing journal_writes rows are refused, not converted: the new index needs each batch's capture
 * times, which live only in the segment files, and a migration sees the database, not the journal
 * directory. Nothing before this migration was released, so an old journal is a development one:
 * remove its data directory (or drain it) and start again.
 */
export class CompactJournalIndex1795737600000 implements MigrationInterface {
  readonly name = 'CompactJournalIndex1795737600000';

  async up(queryRunner: QueryRunner): Promise<void> {
    const rows = await queryRunner.manager.query<{ n: string }[]>(`SELECT count(*) AS n FROM (SELECT 1 FROM journal_writes LIMIT 1) w`);
    if (Number(rows[0]?.n ?? 0) > 0) {
      throw new Error(
        'CompactJournalIndex: journal_writes holds journaled writes from a pre-release version, which this migration does not convert ' +
          '(the new index needs capture times that only the segment files hold). Start from an empty database and journal directory.',
      );
    }
    await queryRunner.query(`
      DROP TABLE journal_writes;

      CREATE TABLE journal_batches (
        first_seq     bigint NOT NULL,
        last_seq      bigint NOT NULL,
        position      bigint NOT NULL,
        captured_upto bigint NOT NULL,
        vpg_key       int    NOT NULL,
        segment       int    NOT NULL,
        bytes         int    NOT NULL,
        PRIMARY KEY (vpg_key, first_seq)
      );
      CREATE INDEX journal_batches_vpg_key_captured_upto_idx ON journal_batches (vpg_key, captured_upto);
      COMMENT ON TABLE journal_batches IS
        'One row per committed batch of a VPG: its records lie back to back in one segment file, seqs first_seq..last_seq (writes and checkpoint markers).';
      COMMENT ON COLUMN journal_batches.bytes IS 'Length of the batch in the segment file, from position.';
      COMMENT ON COLUMN journal_batches.captured_upto IS
        'Newest capture time (microseconds since the epoch) of any record up to and including this batch: never decreases with seq, so a time maps to one batch.';

      -- Eight-byte columns first, then four, then two: no alignment padding inside the row, which
      -- is most of a row's cost when it holds a few writes.
      CREATE TABLE journal_extents (
        first_seq    bigint   NOT NULL,
        last_seq     bigint   NOT NULL,
        position     bigint   NOT NULL,
        vpg_key      int      NOT NULL,
        region       int      NOT NULL,
        segment      int      NOT NULL,
        volume_index smallint NOT NULL,
        entries      bytea    NOT NULL,
        PRIMARY KEY (vpg_key, volume_index, region, first_seq)
      );
      ALTER TABLE journal_extents ALTER COLUMN entries SET STORAGE EXTERNAL;
      COMMENT ON TABLE journal_extents IS
        'Where the writes of one batch to one 64 MiB region of one volume are: packed (seq, position, offset, length) entries, see journal-index.codec.ts.';
      COMMENT ON COLUMN journal_extents.first_seq IS 'The batch''s first seq (journal_batches.first_seq).';
      COMMENT ON COLUMN journal_extents.last_seq IS 'Seq of the last write in entries.';
      COMMENT ON COLUMN journal_extents.position IS 'Where the batch starts in the segment file; entries are relative to it.';
      COMMENT ON COLUMN journal_vpgs.vpg_key IS 'Compact surrogate key of the VPG, used by the journal index tables to keep them narrow.';
    `);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      DROP TABLE journal_extents;
      DROP TABLE journal_batches;
      CREATE TABLE journal_writes (
        vpg_key      int      NOT NULL,
        seq          bigint   NOT NULL,
        volume_index smallint NOT NULL,
        byte_offset  bigint   NOT NULL,
        length       int      NOT NULL,
        segment      int      NOT NULL,
        position     bigint   NOT NULL,
        PRIMARY KEY (vpg_key, seq)
      );
    `);
  }
}
