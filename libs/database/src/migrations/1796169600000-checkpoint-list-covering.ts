import { type MigrationInterface, type QueryRunner } from 'typeorm';

/**
 * Every checkpoint query answered from the index alone.
 *
 * Checkpoints of different VPGs are recorded side by side (each VPG every few seconds), so the rows of
 * one VPG are spread over the heap: a page of 100 from the manual list touched about 100 heap pages,
 * each a disk read once the catalog outgrows memory (measured: one page of the list waiting 12 ms on
 * 6 reads). The list index now carries every column a query returns (`COLUMNS` in the catalog), so
 * a page reads two or three index pages and no heap. The timeline's rows at the picked times, the
 * stats' earliest and latest, and the point-in-time lookup of a cut become index-only the same way.
 *
 * Index-only scans skip the heap only for pages the visibility map marks all-visible, which for an
 * insert-only table autovacuum refreshes after 20% of the table is new (10 million rows with 100
 * VPGs at 30 days: a week). The newest day is what the timeline reads; it is vacuumed after every
 * 20,000 new checkpoints instead (about 15 minutes with 100 VPGs at 5 s). Such a vacuum reads only the
 * pages not yet all-visible and, with nothing dead, skips the indexes.
 *
 * The build blocks writes to checkpoints while it runs (minutes with tens of millions of rows); it runs
 * at startup, before any service records a checkpoint.
 */
export class CheckpointListCovering1796169600000 implements MigrationInterface {
  readonly name = 'CheckpointListCovering1796169600000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE INDEX checkpoints_vpg_id_captured_at_id_covering ON checkpoints (vpg_id, captured_at, id) INCLUDE (kind, cut, name, vm_id);
      DROP INDEX checkpoints_vpg_id_captured_at_id_idx;
      ALTER TABLE checkpoints SET (autovacuum_vacuum_insert_threshold = 20000, autovacuum_vacuum_insert_scale_factor = 0);
    `);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE INDEX checkpoints_vpg_id_captured_at_id_idx ON checkpoints (vpg_id, captured_at, id) INCLUDE (kind);
      DROP INDEX checkpoints_vpg_id_captured_at_id_covering;
      ALTER TABLE checkpoints RESET (autovacuum_vacuum_insert_threshold, autovacuum_vacuum_insert_scale_factor);
    `);
  }
}
