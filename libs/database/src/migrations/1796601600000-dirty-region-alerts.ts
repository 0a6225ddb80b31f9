import { type MigrationInterface, type QueryRunner } from 'typeorm';

/**
 * The protected site's degraded mode (a splitter log that cannot take writes tracks dirty regions
 * instead of refusing them) is reported as the condition 'dirty-regions': `site_alerts.kind` takes it.
 */
export class DirtyRegionAlerts1796601600000 implements MigrationInterface {
  readonly name = 'DirtyRegionAlerts1796601600000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      ALTER TABLE site_alerts DROP CONSTRAINT site_alerts_kind_check;
      ALTER TABLE site_alerts ADD CONSTRAINT site_alerts_kind_check
        CHECK (kind IN ('dirty-regions', 'log-refusing', 'volume-behind', 'resync-failed'));
    `);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      DELETE FROM site_alerts WHERE kind = 'dirty-regions';
      ALTER TABLE site_alerts DROP CONSTRAINT site_alerts_kind_check;
      ALTER TABLE site_alerts ADD CONSTRAINT site_alerts_kind_check
        CHECK (kind IN ('log-refusing', 'volume-behind', 'resync-failed'));
    `);
  }
}
