import { type MigrationInterface, type QueryRunner } from 'typeorm';

/**
 * The checkpoint catalog at scale (30 days of 5 s checkpoints per VPG is about 518,000 rows, and a
 * hundred VPGs share the table):
 *
 * - `checkpoints_vpg_id_captured_at_id_idx` (vpg_id, captured_at, id) INCLUDE (kind): the order of
 *   every list (time, then id, which makes the manual list's cursor stable), the earliest and latest
 *   checkpoint as one index probe each, and the timeline's scan of a day as an index-only scan. It
 *   replaces (vpg_id, captured_at), which is its prefix.
 * - `checkpoint_stats`: how many checkpoints of each kind a VPG has, kept by statement-level
 *   triggers on `checkpoints` in the same transaction as the insert or delete (the journal writer's
 *   commit, the promoter's trim, COPY), so stats never count 518,000 rows. One row update per
 *   statement and VPG, not per checkpoint, and a count of the statements that removed or changed
 *   some (the timeline's cache checks it). The row lock it takes is held to the end of the
 *   transaction; the writer and the promoter both change checkpoints before they update
 *   journal_vpgs, so the two locks are always taken in the same order.
 * - `vpg_history_status`: the journal history status the monitor last acted on, per VPG, and the
 *   open alert if any, so a restart neither raises an alert again nor forgets one.
 */
export class CheckpointCatalog1795651200000 implements MigrationInterface {
  readonly name = 'CheckpointCatalog1795651200000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      -- Nothing may change checkpoints between the counting below and the triggers taking over.
      LOCK TABLE checkpoints IN SHARE ROW EXCLUSIVE MODE;

      CREATE INDEX checkpoints_vpg_id_captured_at_id_idx ON checkpoints (vpg_id, captured_at, id) INCLUDE (kind);
      DROP INDEX checkpoints_vpg_id_captured_at_idx;

      CREATE TABLE checkpoint_stats (
        vpg_id                 uuid   PRIMARY KEY,
        automatic              bigint NOT NULL DEFAULT 0,
        tagged                 bigint NOT NULL DEFAULT 0,
        application_consistent bigint NOT NULL DEFAULT 0,
        removals               bigint NOT NULL DEFAULT 0
      );
      COMMENT ON TABLE checkpoint_stats IS
        'Checkpoints per VPG and kind, kept by triggers on checkpoints in the same transaction. Rebuildable by counting checkpoints.';
      COMMENT ON COLUMN checkpoint_stats.removals IS
        'Statements that deleted or changed checkpoints of the VPG: a reader that cached checkpoints knows from it (and the counts) whether only appends happened since.';

      CREATE FUNCTION checkpoint_stats_apply() RETURNS trigger LANGUAGE plpgsql AS $fn$
      BEGIN
        -- Sorted by VPG so that two statements touching several VPGs lock their rows in one order.
        IF TG_OP IN ('DELETE', 'UPDATE') THEN
          UPDATE checkpoint_stats s
             SET automatic = s.automatic - d.automatic,
                 tagged = s.tagged - d.tagged,
                 application_consistent = s.application_consistent - d.application_consistent,
                 removals = s.removals + 1
            FROM (SELECT vpg_id,
                         count(*) FILTER (WHERE kind = 'automatic') AS automatic,
                         count(*) FILTER (WHERE kind = 'tagged') AS tagged,
                         count(*) FILTER (WHERE kind = 'application-consistent') AS application_consistent
                    FROM removed GROUP BY vpg_id ORDER BY vpg_id) d
           WHERE s.vpg_id = d.vpg_id;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
          INSERT INTO checkpoint_stats AS s (vpg_id, automatic, tagged, application_consistent)
          SELECT vpg_id,
                 count(*) FILTER (WHERE kind = 'automatic'),
                 count(*) FILTER (WHERE kind = 'tagged'),
                 count(*) FILTER (WHERE kind = 'application-consistent')
            FROM added GROUP BY vpg_id ORDER BY vpg_id
          ON CONFLICT (vpg_id) DO UPDATE
             SET automatic = s.automatic + EXCLUDED.automatic,
                 tagged = s.tagged + EXCLUDED.tagged,
                 application_consistent = s.application_consistent + EXCLUDED.application_consistent;
        END IF;
        RETURN NULL;
      END
      $fn$;

      CREATE FUNCTION checkpoint_stats_truncate() RETURNS trigger LANGUAGE plpgsql AS $fn$
      BEGIN
        DELETE FROM checkpoint_stats;
        RETURN NULL;
      END
      $fn$;

      CREATE TRIGGER checkpoints_stats_insert AFTER INSERT ON checkpoints
        REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION checkpoint_stats_apply();
      CREATE TRIGGER checkpoints_stats_delete AFTER DELETE ON checkpoints
        REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION checkpoint_stats_apply();
      CREATE TRIGGER checkpoints_stats_update AFTER UPDATE ON checkpoints
        REFERENCING OLD TABLE AS removed NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION checkpoint_stats_apply();
      CREATE TRIGGER checkpoints_stats_truncate AFTER TRUNCATE ON checkpoints
        FOR EACH STATEMENT EXECUTE FUNCTION checkpoint_stats_truncate();

      CREATE TABLE vpg_history_status (
        vpg_id             uuid        PRIMARY KEY,
        status             text        NOT NULL CHECK (status IN ('ok', 'warning', 'alert', 'filling')),
        actual_seconds     bigint      NOT NULL,
        configured_seconds bigint      NOT NULL,
        evaluated_at       timestamptz NOT NULL,
        changed_at         timestamptz NOT NULL,
        alert_raised_at    timestamptz NULL
      );
      COMMENT ON TABLE vpg_history_status IS
        'Journal history status per VPG as last evaluated by the history monitor; an open alert has alert_raised_at set.';

      INSERT INTO checkpoint_stats (vpg_id, automatic, tagged, application_consistent)
      SELECT vpg_id,
             count(*) FILTER (WHERE kind = 'automatic'),
             count(*) FILTER (WHERE kind = 'tagged'),
             count(*) FILTER (WHERE kind = 'application-consistent')
        FROM checkpoints GROUP BY vpg_id;
    `);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      DROP TABLE vpg_history_status;
      DROP TRIGGER checkpoints_stats_truncate ON checkpoints;
      DROP TRIGGER checkpoints_stats_update ON checkpoints;
      DROP TRIGGER checkpoints_stats_delete ON checkpoints;
      DROP TRIGGER checkpoints_stats_insert ON checkpoints;
      DROP FUNCTION checkpoint_stats_truncate();
      DROP FUNCTION checkpoint_stats_apply();
      DROP TABLE checkpoint_stats;
      CREATE INDEX checkpoints_vpg_id_captured_at_idx ON checkpoints (vpg_id, captured_at);
      DROP INDEX checkpoints_vpg_id_captured_at_id_idx;
    `);
  }
}
