import { type MigrationInterface, type QueryRunner } from 'typeorm';

/**
 * The journal writer's outbox: the messages a journal commit gives rise to (checkpoint recorded,
 * tagged checkpoint inserted) are written in the commit's own transaction, then published to the bus
 * and deleted. A crash between the commit and the publish leaves them here for the next publish, so
 * every one reaches the bus at least once; the bus redelivering the records would not bring them back,
 * since by then the records are duplicates.
 */
export class JournalOutbox1795824000000 implements MigrationInterface {
  readonly name = 'JournalOutbox1795824000000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE journal_outbox (
        position   bigserial   PRIMARY KEY,
        topic      text        NOT NULL,
        key        text        NOT NULL,
        value      bytea       NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
      );
      COMMENT ON TABLE journal_outbox IS
        'Messages of committed journal transactions not yet published to the bus; published in position order, then deleted.';
    `);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE journal_outbox;`);
  }
}
