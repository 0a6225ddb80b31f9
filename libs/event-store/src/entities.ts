import { type Vpg } from '@cdp/domain';
import { Column, Entity, PrimaryColumn, PrimaryGeneratedColumn } from 'typeorm';

/**
 * One row of vpg_events, shaped exactly like the table (pg returns bigint as a string). The
 * EventStore turns rows into StoredEvent; other code should not need this class.
 */
@Entity({ name: 'vpg_events' })
export class VpgEventEntity {
  @PrimaryGeneratedColumn({ type: 'bigint', name: 'position' })
  position!: string;

  @Column({ name: 'stream_id', type: 'uuid' })
  streamId!: string;

  @Column({ type: 'int' })
  version!: number;

  @Column({ type: 'text' })
  type!: string;

  @Column({ type: 'jsonb' })
  data!: unknown;

  @Column({ name: 'recorded_at', type: 'timestamptz', default: () => 'now()' })
  recordedAt!: Date;
}

/** Read model of a VPG (table vpgs), written in the same transaction as the VPG's events. */
@Entity({ name: 'vpgs' })
export class VpgEntity {
  @PrimaryColumn({ type: 'uuid' })
  id!: string;

  @Column({ type: 'text', unique: true })
  name!: string;

  @Column({ type: 'jsonb' })
  definition!: Vpg;

  /** Version of the VPG's event stream this row reflects. */
  @Column({ type: 'int' })
  version!: number;

  @Column({ name: 'created_at', type: 'timestamptz' })
  createdAt!: Date;

  @Column({ name: 'updated_at', type: 'timestamptz' })
  updatedAt!: Date;
}

/** Pass to createDataSource({ entities }). */
export const eventStoreEntities = [VpgEventEntity, VpgEntity];
