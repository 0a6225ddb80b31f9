import { type MigrationInterface, type QueryRunner } from 'typeorm';

/**
 * The stretches of a VPG's order that pass through states its volumes were never in: from a sync or
 * restart record (a forced resync, the sync of dirty regions, the active regions after a host crash, a
 * restart of the order) to the first checkpoint after it. A point in time inside one is not recovered,
 * and the journal is syncing while one is open: that replaces `journal_vpgs.syncing`, which nothing
 * ever set.
 */
export class JournalSyncs1796688000000 implements MigrationInterface {
  readonly name = 'JournalSyncs1796688000000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE journal_syncs (
        vpg_key   int     NOT NULL,
        from_seq  bigint  NOT NULL,
        until_seq bigint  NULL,
        reason    text    NOT NULL,
        PRIMARY KEY (vpg_key, from_seq)
      );
      COMMENT ON TABLE journal_syncs IS 'Stretches of a VPG''s order inside a sync: no point in time from from_seq up to (not including) until_seq is a state the volumes were in.';
      COMMENT ON COLUMN journal_syncs.until_seq IS 'The cut of the first checkpoint after from_seq; NULL while none is recorded yet (the sync may still run).';
      ALTER TABLE journal_vpgs DROP COLUMN syncing;
    `);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      ALTER TABLE journal_vpgs ADD COLUMN syncing boolean NOT NULL DEFAULT false;
      DROP TABLE journal_syncs;
    `);
  }
}
