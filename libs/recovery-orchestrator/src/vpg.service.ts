import { randomUUID } from 'node:crypto';
import { Inject, Injectable, Logger, type OnApplicationBootstrap, type BeforeApplicationShutdown } from '@nestjs/common';
import { DataSource, type EntityManager } from 'typeorm';
import { BUS, type Bus, type BusProducer } from '@cdp/bus';
import { TOPICS, type ChangeVpgSettingsRequest, type CreateVpgRequest, type DomainEventMessage } from '@cdp/contracts';
import { DomainError, decideVpg, evolveVpg, initialVpgState, type Vpg, type VpgEvent, type VpgState } from '@cdp/domain';
import { EventRelay, EventStore, handleCommand, type StoredEvent } from '@cdp/event-store';

/**
 * VPG lifecycle: commands are decided by the pure VPG decider over the VPG's event stream, appended to
 * the event store with optimistic concurrency, projected into the `vpgs` read model in the same
 * transaction, and published to the bus by the relay (at least once, in order).
 */
@Injectable()
export class VpgService implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger('vpgs');
  private readonly store: EventStore;
  private readonly relay: EventRelay;
  private readonly producer: BusProducer;

  constructor(
    private readonly dataSource: DataSource,
    @Inject(BUS) bus: Bus,
  ) {
    this.store = new EventStore(dataSource);
    this.producer = bus.createProducer();
    // A volatile bus lost every event when the process stopped; consumers are idempotent, so the
    // relay simply publishes the whole history again at start.
    this.relay = new EventRelay(dataSource, {
      name: 'bus-events',
      fromStart: !bus.durable,
      publish: (events) => this.publish(events),
    });
  }

  async onApplicationBootstrap(): Promise<void> {
    await this.relay.start();
  }

  async beforeApplicationShutdown(): Promise<void> {
    await this.relay.stop();
  }

  async create(request: CreateVpgRequest): Promise<Vpg> {
    const existing = await this.dataSource.query<unknown[]>(`SELECT id FROM vpgs WHERE name = $1`, [request.name.trim()]);
    if (existing.length > 0) {
      throw new DomainError('already-exists', `a VPG named ${request.name.trim()} already exists`);
    }
    const vpgId = randomUUID();
    const { state } = await handleCommand<Parameters<typeof decideVpg>[0], VpgEvent, VpgState>(
      this.store,
      vpgId,
      {
        type: 'CreateVpg',
        vpgId,
        name: request.name,
        vms: request.vms.map((vm) => ({
          id: randomUUID(),
          name: vm.name,
          volumes: vm.volumes.map((v) => ({ id: randomUUID(), name: v.name, sizeBytes: v.sizeBytes, blockSize: v.blockSize })),
          ...(vm.host === undefined ? {} : { host: vm.host }),
        })),
        settings: request.settings,
        now: new Date().toISOString(),
      },
      { decide: decideVpg, evolve: evolveVpg, initialState: initialVpgState },
      (em, events, newState) => project(em, events, newState),
    );
    this.relay.poke();
    if (state.status !== 'active') {
      throw new Error('VPG creation produced no VPG');
    }
    this.logger.log(`created VPG ${state.vpg.name} (${vpgId})`);
    return state.vpg;
  }

  /**
   * Changes the settings named in `settings`; the others stay. Decided over the VPG's events like a
   * creation, so a change that would leave the settings invalid (an alert threshold above the
   * warning) is refused whole. Consumers learn it from `vpg.settings-changed`: the scheduler moves
   * its timer to the new interval; promotion and the history monitor read the new settings on their
   * next round.
   */
  async changeSettings(vpgId: string, settings: ChangeVpgSettingsRequest): Promise<Vpg> {
    const { state } = await handleCommand<Parameters<typeof decideVpg>[0], VpgEvent, VpgState>(
      this.store,
      vpgId,
      { type: 'ChangeVpgSettings', vpgId, settings, now: new Date().toISOString() },
      { decide: decideVpg, evolve: evolveVpg, initialState: initialVpgState },
      (em, events, newState) => project(em, events, newState),
    );
    this.relay.poke();
    if (state.status !== 'active') {
      throw new Error('a settings change left no VPG');
    }
    this.logger.log(`VPG ${state.vpg.name}: settings changed (${Object.keys(settings).join(', ')})`);
    return state.vpg;
  }

  async list(): Promise<Vpg[]> {
    const rows = await this.dataSource.query<{ definition: Vpg }[]>(`SELECT definition FROM vpgs ORDER BY created_at, id`);
    return rows.map((r) => r.definition);
  }

  async get(vpgId: string): Promise<Vpg> {
    const rows = await this.dataSource.query<{ definition: Vpg }[]>(`SELECT definition FROM vpgs WHERE id = $1`, [vpgId]);
    const row = rows[0];
    if (!row) {
      throw new DomainError('not-found', `VPG ${vpgId} does not exist`);
    }
    return row.definition;
  }

  private async publish(events: readonly StoredEvent[]): Promise<void> {
    const messages = events.flatMap((stored) => {
      const message = toMessage(stored);
      return message ? [{ key: message.vpgId, value: Buffer.from(JSON.stringify(message)) }] : [];
    });
    if (messages.length > 0) {
      await this.producer.send(TOPICS.events, messages);
    }
  }
}

async function project(em: EntityManager, _events: readonly VpgEvent[], state: VpgState): Promise<void> {
  if (state.status !== 'active') {
    return;
  }
  const vpg = state.vpg;
  await em.query(
    `INSERT INTO vpgs (id, name, definition, version, created_at, updated_at)
     VALUES ($1, $2, $3, 1, $4, now())
     ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, definition = EXCLUDED.definition,
       version = vpgs.version + 1, updated_at = now()`,
    [vpg.id, vpg.name, JSON.stringify(vpg), vpg.createdAt],
  );
}

/** Stored VPG events become bus events; the event id is derived from the store position, so republishing keeps it. */
function toMessage(stored: StoredEvent): DomainEventMessage | undefined {
  const event = stored.data as VpgEvent;
  const id = positionUuid(stored.position);
  const occurredAt = stored.recordedAt;
  switch (event.type) {
    case 'VpgCreated':
      return { id, version: 1, type: 'vpg.created', vpgId: event.vpg.id, occurredAt, data: { vpg: event.vpg } };
    case 'VpgSettingsChanged':
      return { id, version: 1, type: 'vpg.settings-changed', vpgId: event.vpgId, occurredAt, data: { settings: event.settings } };
  }
}

function positionUuid(position: number): string {
  const hex = position.toString(16).padStart(12, '0');
  return `00000000-0000-4000-8000-${hex}`;
}
