import { type MigrationInterface, type QueryRunner } from 'typeorm';

/**
 * Per-member state of the journal writer's merge, for VPGs whose VMs sit on several hosts: how far
 * each member's own order is journaled and which coordinated checkpoint it has reached. Written in the
 * same transaction as the journal commit it describes; NULL for a VPG with one member.
 */
export class JournalMembers1796083200000 implements MigrationInterface {
  readonly name = 'JournalMembers1796083200000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      ALTER TABLE journal_vpgs ADD COLUMN members jsonb;
      COMMENT ON COLUMN journal_vpgs.members IS
        'VPGs with several members: per member, the last journaled seq of its own order and the coordinated checkpoint it waits at (journal-writer member-merge.ts).';
    `);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`ALTER TABLE journal_vpgs DROP COLUMN members;`);
  }
}
