import { type MigrationInterface, type QueryRunner } from 'typeorm';

/**
 * Alerts for a protected site in trouble (site-alerts.ts in the domain):
 *
 * - `site_reports`: per VPG and host, the newest splitter report acted on and the splitter process
 *   that sent it, so a report of that process that arrives late (behind a newer one) changes nothing.
 * - `site_alerts`: the open alerts, one per VPG, host and condition; a row is deleted when its alert
 *   clears. The recovery orchestrator writes both in one transaction per report.
 *
 * No foreign key to `vpgs`: the rows are removed with nothing else today, and a report for a VPG the
 * recovery site does not know is refused before anything is written.
 */
export class SiteAlerts1796428800000 implements MigrationInterface {
  readonly name = 'SiteAlerts1796428800000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE site_reports (
        vpg_id      uuid        NOT NULL,
        host        text        NOT NULL,
        instance    uuid        NOT NULL,
        reported_at timestamptz NOT NULL,
        PRIMARY KEY (vpg_id, host)
      );
      COMMENT ON TABLE site_reports IS
        'The newest splitter condition report acted on, per VPG and host: older ones that arrive later are ignored.';

      CREATE TABLE site_alerts (
        vpg_id    uuid        NOT NULL,
        host      text        NOT NULL,
        kind      text        NOT NULL CHECK (kind IN ('log-refusing', 'volume-behind', 'resync-failed')),
        raised_at timestamptz NOT NULL,
        message   text        NOT NULL,
        PRIMARY KEY (vpg_id, host, kind)
      );
      COMMENT ON TABLE site_alerts IS
        'Open alerts for a protected site in trouble, per VPG, host and condition; deleted when the condition is no longer reported.';
    `);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      DROP TABLE site_alerts;
      DROP TABLE site_reports;
    `);
  }
}
