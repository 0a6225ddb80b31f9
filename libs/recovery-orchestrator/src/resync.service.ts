import { randomUUID } from 'node:crypto';
import { Inject, Injectable, Logger } from '@nestjs/common';
import { BUS, type Bus, type BusProducer } from '@cdp/bus';
import { TOPICS, type SplitterCommand } from '@cdp/contracts';
import { DomainError, volumesOf } from '@cdp/domain';
import { VpgService } from './vpg.service';

export interface ResyncAccepted {
  readonly resyncId: string;
  readonly vpgId: string;
  /** The volumes the splitters were asked to resync (every volume of the VPG when none were named). */
  readonly volumeIds: readonly string[];
  readonly requestedAt: string;
}

/**
 * Operator-forced resyncs: validates the request against the VPG's definition and sends
 * `replication.resync` to the VPG's splitters, which carry it out and report progress in their VPG
 * status. Nothing is stored here: the splitter keeps the resync's progress durably from the moment it
 * takes the command.
 */
@Injectable()
export class ResyncService {
  private readonly logger = new Logger('resync');
  private readonly producer: BusProducer;

  constructor(
    private readonly vpgs: VpgService,
    @Inject(BUS) bus: Bus,
  ) {
    this.producer = bus.createProducer();
  }

  async request(vpgId: string, request: { readonly volumeIds?: readonly string[]; readonly reason?: string }): Promise<ResyncAccepted> {
    const vpg = await this.vpgs.get(vpgId);
    const all = volumesOf(vpg).map((v) => v.id);
    if (all.length === 0) {
      throw new DomainError('failed-precondition', `VPG ${vpg.name} has no volumes to resync`);
    }
    const named = request.volumeIds === undefined ? null : [...new Set(request.volumeIds)];
    const unknown = (named ?? []).filter((id) => !all.includes(id));
    if (unknown.length > 0) {
      throw new DomainError('invalid-argument', `volume(s) ${unknown.join(', ')} are not in VPG ${vpg.name}`, { volumeIds: unknown });
    }
    const command: SplitterCommand = {
      type: 'replication.resync',
      vpgId,
      resyncId: randomUUID(),
      volumeIds: named,
      requestedAt: new Date().toISOString(),
      reason: request.reason ?? '',
    };
    await this.producer.send(TOPICS.commands, [{ key: vpgId, value: Buffer.from(JSON.stringify(command)) }]);
    this.logger.log(`resync ${command.resyncId} of VPG ${vpg.name} requested: ${named === null ? 'every volume' : `${named.length} volume(s)`}${command.reason ? ` (${command.reason})` : ''}`);
    return { resyncId: command.resyncId, vpgId, volumeIds: named ?? all, requestedAt: command.requestedAt };
  }
}
