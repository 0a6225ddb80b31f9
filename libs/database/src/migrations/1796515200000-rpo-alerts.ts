import { type MigrationInterface, type QueryRunner } from 'typeorm';

/**
 * The RPO alert (rpo-status.ts in the domain) beside the history status the monitor keeps per VPG:
 * the RPO last evaluated and, while the alert is open, when it was raised, so a restart neither raises
 * it again nor forgets it. Both are null for a VPG evaluated before this migration until its next
 * evaluation.
 */
export class RpoAlerts1796515200000 implements MigrationInterface {
  readonly name = 'RpoAlerts1796515200000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      ALTER TABLE vpg_history_status
        ADD COLUMN rpo_seconds bigint NULL,
        ADD COLUMN rpo_target_seconds bigint NULL,
        ADD COLUMN rpo_alert_raised_at timestamptz NULL;
    `);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      ALTER TABLE vpg_history_status
        DROP COLUMN rpo_alert_raised_at,
        DROP COLUMN rpo_target_seconds,
        DROP COLUMN rpo_seconds;
    `);
  }
}
