import { type MigrationInterface, type QueryRunner } from 'typeorm';

/**
 * `checkpoint_hours`: each VPG's checkpoints packed per UTC hour, so that the recovery slider's first
 * read of a day is 25 rows, not 17,280.
 *
 * The timeline rule needs, for every checkpoint of the last 24 hours, its capture time and whether it
 * is marked, in (captured_at, id) order. Read from the list index that is an index-only scan of the
 * whole day (at 5 s, 17,280 entries): about 4 ms of server time when every page is in shared buffers,
 * and 12.6 ms (p50) to 29.9 ms (p99) with 100 VPGs of 30 days, whose index is far larger than memory.
 * An hour's row holds what the rule needs and nothing else:
 *
 * - `times`: every capture time of the hour as timestamptz_send writes it (int64 microseconds since
 *   2000-01-01 UTC, big-endian), concatenated in (captured_at, id) order: 8 bytes a checkpoint, 5.6 KiB
 *   an hour at 5 s. Stored out of line and uncompressed (STORAGE EXTERNAL): microsecond times barely
 *   compress, and reading them should cost no decompression.
 * - `marked`: the 0-based positions in that order of the tagged and application-consistent ones.
 * - `count`: how many.
 *
 * Kept by statement-level triggers in the same transaction as the change (the journal writer's commit,
 * the promoter's trim, a resync's invalidation, COPY), so it is always exactly what `checkpoints`
 * holds. A statement rebuilds each hour it touched from the list index (at most an hour of rows, about
 * 0.3 ms at 5 s): an append, a checkpoint recorded late, a delete and an update are all the same case,
 * and no arithmetic on packed bytes can drift. Hours are visited in (vpg_id, hour) order, so two
 * statements lock them in one order.
 *
 * Concurrency (READ COMMITTED, as every writer runs): the hour's row is locked before it is recomputed,
 * and the recomputation is a new statement with a new snapshot, so it sees every transaction that
 * changed the hour and committed before the lock was granted. A transaction still running that
 * touches the same hour holds the lock, so it is either fully seen or recomputes after us. Lock
 * order: these triggers fire before checkpoint_stats' (triggers fire in name order), so a statement
 * locks its hours, in order, then its VPGs' stats rows. The journal writer and the promoter each
 * change checkpoints in one statement per transaction, so no transaction holds a stats row while it
 * waits for an hour.
 *
 * The cost moves to writes: one rebuild of an hour per checkpoint recorded (a 5.6 KiB row version at
 * 5 s; at the 1 s minimum, 28 KiB), against a day's scan for every first read of a slider.
 *
 * The backfill reads and sorts every checkpoint once and blocks writes to checkpoints meanwhile
 * (minutes with tens of millions of rows); it runs at startup, before any service records one.
 */
export class CheckpointHours1796256000000 implements MigrationInterface {
  readonly name = 'CheckpointHours1796256000000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      -- Nothing may change checkpoints between the backfill below and the triggers taking over.
      LOCK TABLE checkpoints IN SHARE ROW EXCLUSIVE MODE;

      CREATE TABLE checkpoint_hours (
        vpg_id uuid        NOT NULL,
        hour   timestamptz NOT NULL,
        count  integer     NOT NULL,
        times  bytea       NOT NULL,
        marked integer[]   NOT NULL,
        PRIMARY KEY (vpg_id, hour)
      );
      ALTER TABLE checkpoint_hours ALTER COLUMN times SET STORAGE EXTERNAL;
      COMMENT ON TABLE checkpoint_hours IS
        'Per VPG and UTC hour, the capture times of its checkpoints in (captured_at, id) order (timestamptz_send, concatenated) and the positions of the marked ones. Kept by triggers on checkpoints; rebuildable from checkpoints.';

      CREATE FUNCTION checkpoint_hours_rebuild(v uuid, h timestamptz) RETURNS void LANGUAGE plpgsql AS $fn$
      DECLARE
        n integer;
        t bytea;
        m integer[];
      BEGIN
        -- Lock the hour first (creating its row if need be): the read below is a new statement with a
        -- new snapshot, so it sees every change to the hour committed before the lock was granted.
        INSERT INTO checkpoint_hours (vpg_id, hour, count, times, marked) VALUES (v, h, 0, ''::bytea, '{}')
          ON CONFLICT (vpg_id, hour) DO NOTHING;
        PERFORM 1 FROM checkpoint_hours WHERE vpg_id = v AND hour = h FOR UPDATE;
        SELECT count(*),
               coalesce(string_agg(timestamptz_send(c.captured_at), ''::bytea ORDER BY c.captured_at, c.id), ''::bytea),
               coalesce(array_agg(c.position ORDER BY c.position) FILTER (WHERE c.kind <> 'automatic'), '{}')
          INTO n, t, m
          FROM (SELECT captured_at, id, kind, (row_number() OVER (ORDER BY captured_at, id) - 1)::integer AS position
                  FROM checkpoints
                 WHERE vpg_id = v AND captured_at >= h AND captured_at < h + interval '1 hour') c;
        IF n = 0 THEN
          DELETE FROM checkpoint_hours WHERE vpg_id = v AND hour = h;
        ELSE
          UPDATE checkpoint_hours SET count = n, times = t, marked = m WHERE vpg_id = v AND hour = h;
        END IF;
      END
      $fn$;

      CREATE FUNCTION checkpoint_hours_apply() RETURNS trigger LANGUAGE plpgsql AS $fn$
      DECLARE
        touched record;
      BEGIN
        -- A transition table exists only for the operations that have it, hence one query per operation.
        IF TG_OP = 'INSERT' THEN
          FOR touched IN SELECT DISTINCT vpg_id, date_trunc('hour', captured_at, 'UTC') AS hour FROM added ORDER BY 1, 2 LOOP
            PERFORM checkpoint_hours_rebuild(touched.vpg_id, touched.hour);
          END LOOP;
        ELSIF TG_OP = 'DELETE' THEN
          FOR touched IN SELECT DISTINCT vpg_id, date_trunc('hour', captured_at, 'UTC') AS hour FROM removed ORDER BY 1, 2 LOOP
            PERFORM checkpoint_hours_rebuild(touched.vpg_id, touched.hour);
          END LOOP;
        ELSE
          FOR touched IN SELECT DISTINCT vpg_id, date_trunc('hour', captured_at, 'UTC') AS hour
                           FROM (SELECT vpg_id, captured_at FROM added UNION ALL SELECT vpg_id, captured_at FROM removed) changed
                          ORDER BY 1, 2 LOOP
            PERFORM checkpoint_hours_rebuild(touched.vpg_id, touched.hour);
          END LOOP;
        END IF;
        RETURN NULL;
      END
      $fn$;

      CREATE FUNCTION checkpoint_hours_truncate() RETURNS trigger LANGUAGE plpgsql AS $fn$
      BEGIN
        DELETE FROM checkpoint_hours;
        RETURN NULL;
      END
      $fn$;

      CREATE TRIGGER checkpoints_hours_insert AFTER INSERT ON checkpoints
        REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION checkpoint_hours_apply();
      CREATE TRIGGER checkpoints_hours_delete AFTER DELETE ON checkpoints
        REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION checkpoint_hours_apply();
      CREATE TRIGGER checkpoints_hours_update AFTER UPDATE ON checkpoints
        REFERENCING OLD TABLE AS removed NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION checkpoint_hours_apply();
      CREATE TRIGGER checkpoints_hours_truncate AFTER TRUNCATE ON checkpoints
        FOR EACH STATEMENT EXECUTE FUNCTION checkpoint_hours_truncate();

      INSERT INTO checkpoint_hours (vpg_id, hour, count, times, marked)
      SELECT vpg_id, hour, count(*),
             string_agg(timestamptz_send(captured_at), ''::bytea ORDER BY captured_at, id),
             coalesce(array_agg(position ORDER BY position) FILTER (WHERE kind <> 'automatic'), '{}')
        FROM (SELECT vpg_id, captured_at, id, kind, date_trunc('hour', captured_at, 'UTC') AS hour,
                     (row_number() OVER (PARTITION BY vpg_id, date_trunc('hour', captured_at, 'UTC') ORDER BY captured_at, id) - 1)::integer AS position
                FROM checkpoints) c
       GROUP BY vpg_id, hour;
    `);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      DROP TRIGGER checkpoints_hours_truncate ON checkpoints;
      DROP TRIGGER checkpoints_hours_update ON checkpoints;
      DROP TRIGGER checkpoints_hours_delete ON checkpoints;
      DROP TRIGGER checkpoints_hours_insert ON checkpoints;
      DROP FUNCTION checkpoint_hours_truncate();
      DROP FUNCTION checkpoint_hours_apply();
      DROP FUNCTION checkpoint_hours_rebuild(uuid, timestamptz);
      DROP TABLE checkpoint_hours;
    `);
  }
}
