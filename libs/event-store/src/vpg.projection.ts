import { DomainError, type VpgEvent, type VpgState } from '@cdp/domain';
import { toDatabaseError } from '@cdp/database';
import { type EntityManager } from 'typeorm';
import { VpgEntity } from './entities';

const NAME_CONSTRAINT = 'vpgs_name_key';

function occurredAt(event: VpgEvent): string {
  switch (event.type) {
    case 'VpgCreated':
      return event.vpg.createdAt;
    case 'VpgSettingsChanged':
      return event.changedAt;
  }
}

/**
 * The vpgs read model, for handleCommand(…, projectVpg): upserts the VPG's row from the state the
 * command left, in the transaction of its events. VPG names are unique across VPGs, which no single
 * stream can check; the unique index can, and a clash becomes the DomainError the user should see.
 */
export async function projectVpg(
  em: EntityManager,
  events: readonly VpgEvent[],
  state: VpgState,
  version: number,
): Promise<void> {
  const last = events.at(-1);
  if (state.status !== 'active' || last === undefined) {
    return;
  }
  const vpg = state.vpg;
  try {
    await em.upsert(
      VpgEntity,
      {
        id: vpg.id,
        name: vpg.name,
        definition: vpg,
        version,
        createdAt: new Date(vpg.createdAt),
        updatedAt: new Date(occurredAt(last)),
      },
      ['id'],
    );
  } catch (error) {
    const failure = toDatabaseError(error);
    if (failure.code === 'unique-violation' && failure.constraint === NAME_CONSTRAINT) {
      throw new DomainError('already-exists', `a VPG named ${vpg.name} already exists`, { name: vpg.name });
    }
    throw failure;
  }
}
