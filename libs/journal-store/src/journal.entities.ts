import { Column, Entity, PrimaryColumn } from 'typeorm';

/**
 * TypeORM mappings of the journal index tables. The schema itself is owned by the migrations in
 * @cdp/database (synchronize is off); these classes must match it.
 */
@Entity({ name: 'journal_vpgs' })
export class JournalVpgEntity {
  @PrimaryColumn('uuid', { name: 'vpg_id' })
  vpgId!: string;

  /** Compact key used in the journal index tables instead of the 16-byte UUID. */
  @Column('int', { name: 'vpg_key', generated: 'increment' })
  vpgKey!: number;

  /** Every record with seq <= appliedSeq is durable in the segments and indexed. */
  @Column('bigint', { name: 'applied_seq' })
  appliedSeq!: string;

  @Column('int')
  segment!: number;

  /** Bytes of `segment` that are indexed; anything after them is an unindexed tail from a crash. */
  @Column('bigint', { name: 'segment_end' })
  segmentEnd!: string;

  @Column('bigint', { name: 'replica_seq' })
  replicaSeq!: string;

  @Column('timestamptz', { name: 'last_captured_at', nullable: true })
  lastCapturedAt!: Date | null;

  /** The merge state of a VPG with several members (journal-writer member-merge.ts); null with one. */
  @Column('jsonb', { nullable: true })
  members!: unknown;

  @Column('timestamptz', { name: 'updated_at' })
  updatedAt!: Date;
}

/** One committed batch: records first_seq..last_seq back to back in one segment (see journal-index.codec.ts). */
@Entity({ name: 'journal_batches' })
export class JournalBatchEntity {
  @PrimaryColumn('int', { name: 'vpg_key' })
  vpgKey!: number;

  @PrimaryColumn('bigint', { name: 'first_seq' })
  firstSeq!: string;

  @Column('bigint', { name: 'last_seq' })
  lastSeq!: string;

  @Column('int')
  segment!: number;

  @Column('bigint')
  position!: string;

  @Column('int')
  bytes!: number;

  /** Newest capture time (µs) of any record up to this batch; never decreases with seq. */
  @Column('bigint', { name: 'captured_upto' })
  capturedUpto!: string;
}

/** The writes of one batch to one 64 MiB region of one volume, packed (see journal-index.codec.ts). */
@Entity({ name: 'journal_extents' })
export class JournalExtentEntity {
  @PrimaryColumn('int', { name: 'vpg_key' })
  vpgKey!: number;

  @PrimaryColumn('smallint', { name: 'volume_index' })
  volumeIndex!: number;

  @PrimaryColumn('int')
  region!: number;

  @PrimaryColumn('bigint', { name: 'first_seq' })
  firstSeq!: string;

  @Column('bigint', { name: 'last_seq' })
  lastSeq!: string;

  @Column('int')
  segment!: number;

  @Column('bigint')
  position!: string;

  @Column('bytea')
  entries!: Buffer;
}

@Entity({ name: 'checkpoints' })
export class CheckpointEntity {
  @PrimaryColumn('uuid')
  id!: string;

  @Column('uuid', { name: 'vpg_id' })
  vpgId!: string;

  @Column('bigint')
  cut!: string;

  @Column('text')
  kind!: 'automatic' | 'tagged' | 'application-consistent';

  @Column('text', { nullable: true })
  name!: string | null;

  @Column('uuid', { name: 'vm_id', nullable: true })
  vmId!: string | null;

  @Column('timestamptz', { name: 'captured_at' })
  capturedAt!: Date;

  @Column('timestamptz', { name: 'recorded_at' })
  recordedAt!: Date;
}

export const journalEntities = [JournalVpgEntity, JournalBatchEntity, JournalExtentEntity, CheckpointEntity];
