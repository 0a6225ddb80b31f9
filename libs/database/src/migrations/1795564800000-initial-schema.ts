import { type MigrationInterface, type QueryRunner } from 'typeorm';

/**
 * The first schema: the event store of the VPG lifecycle with its read model and relay cursor, and
 * the journal index. Other services code against these table and column names.
 */
export class InitialSchema1795564800000 implements MigrationInterface {
  readonly name = 'InitialSchema1795564800000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE vpg_events (
        position    bigserial   PRIMARY KEY,
        stream_id   uuid        NOT NULL,
        version     int         NOT NULL,
        type        text        NOT NULL,
        data        jsonb       NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT vpg_events_stream_id_version_key UNIQUE (stream_id, version)
      );
      COMMENT ON TABLE vpg_events IS
        'Event store of the VPG lifecycle: append-only, the source of truth for VPG definitions. Never update or delete rows.';
      COMMENT ON COLUMN vpg_events.position IS
        'Global order of all events; the relay publishes in this order. Appends are serialised, so positions become visible in order.';
      COMMENT ON COLUMN vpg_events.stream_id IS 'The VPG id: one stream per VPG.';
      COMMENT ON COLUMN vpg_events.version IS
        '1, 2, 3... within the stream; the unique (stream_id, version) pair is the optimistic concurrency check.';
      COMMENT ON COLUMN vpg_events.data IS 'The whole event object as the domain produced it, including its type.';

      CREATE TABLE vpgs (
        id         uuid        PRIMARY KEY,
        name       text        NOT NULL UNIQUE,
        definition jsonb       NOT NULL,
        version    int         NOT NULL,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL
      );
      COMMENT ON TABLE vpgs IS
        'Read model of the VPGs, written in the same transaction as their events. Rebuildable from vpg_events.';
      COMMENT ON COLUMN vpgs.version IS 'Stream version of vpg_events this row reflects.';

      CREATE TABLE event_relay_cursors (
        name     text   PRIMARY KEY,
        position bigint NOT NULL
      );
      COMMENT ON TABLE event_relay_cursors IS
        'How far each publisher of vpg_events to the bus has got: the last vpg_events.position it published.';

      CREATE TABLE journal_vpgs (
        vpg_id           uuid        PRIMARY KEY,
        vpg_key          serial      UNIQUE NOT NULL,
        applied_seq      bigint      NOT NULL DEFAULT 0,
        segment          int         NOT NULL DEFAULT 0,
        segment_end      bigint      NOT NULL DEFAULT 0,
        replica_seq      bigint      NOT NULL DEFAULT 0,
        last_captured_at timestamptz NULL,
        syncing          boolean     NOT NULL DEFAULT false,
        updated_at       timestamptz NOT NULL DEFAULT now()
      );
      COMMENT ON TABLE journal_vpgs IS 'Journal state per protected VPG.';
      COMMENT ON COLUMN journal_vpgs.vpg_key IS 'Compact surrogate key of the VPG, used by journal_writes to keep that table narrow.';
      COMMENT ON COLUMN journal_vpgs.applied_seq IS 'Highest write seq in the journal; the journal holds a gap-free prefix of the write order.';

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
      COMMENT ON TABLE journal_writes IS
        'Index of the journal: where each captured write lives in the segment files. The data itself is in the segments.';
      COMMENT ON COLUMN journal_writes.volume_index IS 'Index of the volume inside its VPG.';
      COMMENT ON COLUMN journal_writes.byte_offset IS 'Offset of the write on the volume, in bytes.';
      COMMENT ON COLUMN journal_writes.length IS 'Length of the write, in bytes.';
      COMMENT ON COLUMN journal_writes.position IS 'Where the record starts inside that segment file.';

      CREATE TABLE checkpoints (
        id          uuid        PRIMARY KEY,
        vpg_id      uuid        NOT NULL,
        cut         bigint      NOT NULL,
        kind        text        NOT NULL CHECK (kind IN ('automatic', 'tagged', 'application-consistent')),
        name        text        NULL,
        vm_id       uuid        NULL,
        captured_at timestamptz NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX checkpoints_vpg_id_captured_at_idx ON checkpoints (vpg_id, captured_at);
      CREATE INDEX checkpoints_vpg_id_cut_idx ON checkpoints (vpg_id, cut);
      COMMENT ON TABLE checkpoints IS 'Points in the journal a VPG can be recovered to.';
      COMMENT ON COLUMN checkpoints.cut IS 'Write sequence number: the checkpoint includes every write up to and including it.';
      COMMENT ON COLUMN checkpoints.vm_id IS 'For application-consistent checkpoints: the VM whose applications were quiesced.';
      COMMENT ON COLUMN checkpoints.captured_at IS 'When the checkpoint was taken at the source.';

      CREATE TABLE checkpoint_requests (
        id           uuid        PRIMARY KEY,
        vpg_id       uuid        NOT NULL,
        kind         text        NOT NULL,
        name         text        NULL,
        vm_id        uuid        NULL,
        requested_at timestamptz NOT NULL,
        sent_at      timestamptz NULL
      );
      COMMENT ON TABLE checkpoint_requests IS 'Checkpoints asked for by users, and whether the request has been sent to the source.';
      COMMENT ON COLUMN checkpoint_requests.sent_at IS 'NULL until the request has been delivered to the source side.';
    `);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      DROP TABLE checkpoint_requests;
      DROP TABLE checkpoints;
      DROP TABLE journal_writes;
      DROP TABLE journal_vpgs;
      DROP TABLE event_relay_cursors;
      DROP TABLE vpgs;
      DROP TABLE vpg_events;
    `);
  }
}
