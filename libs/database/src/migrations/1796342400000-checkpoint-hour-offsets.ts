import { type MigrationInterface, type QueryRunner } from 'typeorm';

/**
 * checkpoint_hours keeps each capture time in 4 bytes instead of 8: as microseconds since the start of
 * its hour (under 3.6e9, so an unsigned 32-bit integer, big-endian: the low half of int8send), where
 * it was the whole timestamptz_send. An hour at 5 s goes from 5.6 KiB to 2.8 KiB; the row's hour
 * column gives back the rest. Nothing else about the table changes (see CheckpointHours).
 *
 * Why: a slider's first read of a VPG brings the whole day's times from these rows into Node, and the
 * bytes are what that read costs. With 100 VPGs of 30 days at 5 s, 140 KB of times (190 KB as the
 * base64 the reader asks for) took 5 to 7.7 ms at p50: 2.3 ms of it the server's execution, mostly
 * encode(..., 'base64'), and the rest the transfer through node-pg, whose cost grows faster than the
 * size (measured with SELECT repeat('x', n): 0.9 ms for 100 KB, 2.5 ms for 200 KB). With this and
 * the catalog's JSON results (same change), the checkpoints bench's first read of a VPG went from
 * 7.4 to 5.7 ms at p50; its p99 barely moved (15.7 to 15.0 ms, Dec 5).
 *
 * Every row is recomputed from checkpoints, under the lock CheckpointHours' backfill takes (109 s for
 * 51.8M checkpoints on the bench machine; at startup, before any service records one). `down` does the
 * same with the old encoding.
 */
export class CheckpointHourOffsets1796342400000 implements MigrationInterface {
  readonly name = 'CheckpointHourOffsets1796342400000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(reencode(OFFSET, 'microseconds since the hour (uint32, big-endian)'));
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(reencode(SEND, 'timestamptz_send'));
  }
}

/** A capture time `at` of the hour `h` as 4 bytes: microseconds since the hour's start. */
const OFFSET = (at: string, h: string): string =>
  `substring(int8send((extract(epoch FROM ${at}) * 1000000)::bigint - (extract(epoch FROM ${h}) * 1000000)::bigint) FROM 5)`;
/** The encoding before: the whole timestamptz_send, 8 bytes. */
const SEND = (at: string): string => `timestamptz_send(${at})`;

/**
 * The rebuild function of CheckpointHours with `encode` for the times, and every row recomputed with it.
 * The function is restated whole, not shared with CheckpointHours: a shipped migration is never
 * edited, so each one states exactly what it leaves behind.
 */
function reencode(encode: (at: string, h: string) => string, described: string): string {
  return `
    -- Nothing may change checkpoints while the rows are recomputed and the function replaced.
    LOCK TABLE checkpoints IN SHARE ROW EXCLUSIVE MODE;

    CREATE OR REPLACE FUNCTION checkpoint_hours_rebuild(v uuid, h timestamptz) RETURNS void LANGUAGE plpgsql AS $fn$
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
             coalesce(string_agg(${encode('c.captured_at', 'h')}, ''::bytea ORDER BY c.captured_at, c.id), ''::bytea),
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

    UPDATE checkpoint_hours h SET times = p.times
      FROM (SELECT vpg_id, hour, string_agg(${encode('captured_at', 'hour')}, ''::bytea ORDER BY captured_at, id) AS times
              FROM (SELECT vpg_id, captured_at, id, date_trunc('hour', captured_at, 'UTC') AS hour FROM checkpoints) c
             GROUP BY vpg_id, hour) p
     WHERE h.vpg_id = p.vpg_id AND h.hour = p.hour;

    COMMENT ON TABLE checkpoint_hours IS
      'Per VPG and UTC hour, the capture times of its checkpoints in (captured_at, id) order (${described}, concatenated) and the positions of the marked ones. Kept by triggers on checkpoints; rebuildable from checkpoints.';
  `;
}
