import { randomUUID } from 'node:crypto';
import { mkdir, readFile, readdir, rename, writeFile, open } from 'node:fs/promises';
import { join } from 'node:path';
import { Inject, Injectable, Logger, type OnApplicationBootstrap, type BeforeApplicationShutdown } from '@nestjs/common';
import { BUS, type Bus, type BusConsumer, type BusProducer, type MessageBatch } from '@cdp/bus';
import { APP_CONFIG, type AppConfig } from '@cdp/config';
import { TOPICS, domainEventSchema, journalProgressSchema, splitterCommandSchema, vpgSchema, type BarrierHeld, type SplitterCommand } from '@cdp/contracts';
import { DEFAULT_HOST, DomainError, hostOf, vpgMembers, type Vpg } from '@cdp/domain';
import { PayloadRing, type PayloadRingStats } from './payload-ring';
import { SiteConditionReporter } from './site-reporter';
import { VpgCapture, type CaptureStatus } from './vpg-capture';

/**
 * Something that takes writes into the captures from outside (the NBD server). The splitter starts it
 * once the captures found on disk are open (so a client never misses a volume that exists) and stops
 * it before the captures close (so no write arrives at a closed capture, and in-flight writes and
 * flushes finish first). Nest runs one module's shutdown hooks concurrently, hence this explicit order.
 */
export interface SplitterFrontEnd {
  start(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * The protected-site splitter: owns the protected volumes of every VPG it has been told about and
 * captures their writes. It learns VPGs from `vpg.created` events and keeps its own copy of each
 * definition on disk, because the protected site must keep capturing when the recovery site (and the
 * bus) are away, and must know its volumes again after a restart without asking anyone.
 *
 * Layout under <dataDir>/splitter/<vpgId>/: vpg.json, volumes/<index>.img, log/<segment>.seg (and up to two
 * log/<segment>.spare: confirmed segments kept for reuse).
 */
@Injectable()
export class SplitterService implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger('splitter');
  private readonly captures = new Map<string, VpgCapture>();
  private readonly opening = new Map<string, Promise<VpgCapture>>();
  private readonly consumers: BusConsumer[] = [];
  private readonly frontEnds: SplitterFrontEnd[] = [];
  private producer: BusProducer;
  private readonly root: string;
  /** The host this splitter captures for: the VMs placed on it (AppConfig.splitterHost). */
  readonly host: string;
  /**
   * This process, for coordinated checkpoints: a cut counts this member's marker only if the process
   * that reported holding is the one that receives the cut (a restarted process voids the epoch).
   */
  readonly instance = randomUUID();
  /** VPGs with several members: their captures take part in coordinated checkpoints. */
  private readonly multiMember = new Set<string>();
  /** VPGs this splitter has seen that have no VM on its host. */
  private readonly elsewhere = new Set<string>();
  private readonly payloadRingBytes: number;
  private readonly poisonReleasedPayloads: boolean;
  private readonly logLimitBytes: number | undefined;
  private readonly flushLinkWaitMs: number | null;
  private payloads: PayloadRing | undefined;
  /** Tells the recovery site of a VPG's trouble here (a full disk), which raises alerts for it. */
  private readonly reporter: SiteConditionReporter;

  constructor(
    @Inject(BUS) private readonly bus: Bus,
    @Inject(APP_CONFIG) config: AppConfig,
  ) {
    this.producer = bus.createProducer();
    this.root = join(config.dataDir, 'splitter');
    this.host = config.splitterHost;
    this.payloadRingBytes = config.payloadRingBytes;
    this.poisonReleasedPayloads = config.poisonReleasedPayloads;
    this.logLimitBytes = config.splitterLogLimitBytes;
    this.flushLinkWaitMs = config.splitterFlushLinkWaitMs ?? null;
    this.reporter = new SiteConditionReporter(this.producer, this.host, this.instance, () => this.allCaptures());
  }

  async onApplicationBootstrap(): Promise<void> {
    await mkdir(this.root, { recursive: true });
    for (const entry of await readdir(this.root, { withFileTypes: true })) {
      if (entry.isDirectory()) {
        const definition = await this.readDefinition(entry.name);
        if (definition) {
          await this.activate(definition);
        }
      }
    }
    this.logger.log(`protecting ${this.captures.size} VPG(s) from ${this.root} (host ${this.host})`);
    this.reporter.start();
    // Every host reads every command and event: one consumer group per host. The default host keeps
    // the group names it always had.
    const group = (name: string): string => (this.host === DEFAULT_HOST ? name : `${name}.${this.host}`);
    await this.consume(group('splitter-events'), TOPICS.events, (batch) => this.onEvents(batch));
    await this.consume(group('splitter-commands'), TOPICS.commands, (batch) => this.onCommands(batch));
    await this.consume(group('splitter-progress'), TOPICS.journalProgress, (batch) => this.onProgress(batch));
    for (const frontEnd of this.frontEnds) {
      await frontEnd.start();
    }
  }

  async beforeApplicationShutdown(): Promise<void> {
    await this.reporter.stop();
    await Promise.all(this.frontEnds.map((f) => f.stop()));
    await Promise.all(this.consumers.map((c) => c.stop()));
    await Promise.all([...this.captures.values()].map((c) => c.close()));
    this.captures.clear();
  }

  /** Registers a front end; call before the application bootstraps (from a provider's constructor). */
  attachFrontEnd(frontEnd: SplitterFrontEnd): void {
    this.frontEnds.push(frontEnd);
  }

  /** Every VPG this splitter captures now. */
  allCaptures(): VpgCapture[] {
    return [...this.captures.values()];
  }

  capture(vpgId: string): VpgCapture {
    const capture = this.captures.get(vpgId);
    if (!capture) {
      throw new DomainError('not-found', `VPG ${vpgId} is not protected by this splitter`);
    }
    return capture;
  }

  /** The payload ring's figures; null when it is turned off (CDP_PAYLOAD_RING_MB=0) or no VPG has opened yet. */
  payloadRingStats(): PayloadRingStats | null {
    return this.payloads?.stats() ?? null;
  }

  statuses(): CaptureStatus[] {
    return [...this.captures.values()].map((c) => c.status());
  }

  private async consume(groupId: string, topic: string, handler: (batch: MessageBatch) => Promise<void>): Promise<void> {
    const consumer = this.bus.createConsumer({ groupId, topics: [topic], start: 'earliest' });
    this.consumers.push(consumer);
    await consumer.run(handler);
  }

  private async onEvents(batch: MessageBatch): Promise<void> {
    for (const message of batch.messages) {
      const parsed = domainEventSchema.safeParse(parseJson(message.value));
      if (!parsed.success) {
        this.logger.warn(`skipping an event that is not valid: ${parsed.error.message}`);
        continue;
      }
      const event = parsed.data;
      if (event.type === 'vpg.created' && !this.captures.has(event.vpgId)) {
        await this.protect(event.data.vpg as Vpg);
      }
    }
  }

  private async onCommands(batch: MessageBatch): Promise<void> {
    for (const message of batch.messages) {
      const parsed = splitterCommandSchema.safeParse(parseJson(message.value));
      if (!parsed.success) {
        this.logger.warn(`skipping a command that is not valid: ${parsed.error.message}`);
        continue;
      }
      await this.execute(parsed.data);
    }
  }

  private async execute(command: SplitterCommand): Promise<void> {
    const capture = this.captures.get(command.vpgId);
    if (!capture) {
      // Every host sees every VPG's commands; a VPG with no VM here is none of this splitter's business.
      if (!this.elsewhere.has(command.vpgId)) {
        this.logger.warn(`command ${command.type} for VPG ${command.vpgId}, which this splitter does not protect`);
      }
      return;
    }
    switch (command.type) {
      case 'checkpoint.insert':
        capture.insertCheckpoint({ id: command.checkpointId, kind: command.kind, name: command.name, vmId: command.vmId });
        return;
      case 'replication.replay':
        if ((command.member ?? this.host) === this.host || !this.multiMember.has(command.vpgId)) {
          capture.replayFrom(command.fromSeq);
        }
        return;
      case 'checkpoint.prepare': {
        if (!command.members.includes(this.host)) {
          return;
        }
        const marker = { id: command.checkpointId, kind: command.kind, name: command.name, vmId: command.vmId };
        if (capture.prepareBarrier(command.epoch, marker, this.host, command.holdTimeoutMs) !== 'concluded') {
          const held: BarrierHeld = { type: 'checkpoint.held', vpgId: command.vpgId, epoch: command.epoch, member: this.host, instance: this.instance };
          await this.producer.send(TOPICS.barrier, [{ key: command.vpgId, value: Buffer.from(JSON.stringify(held)) }]);
        }
        return;
      }
      case 'checkpoint.cut': {
        const counted = command.holders.some((h) => h.member === this.host && h.instance === this.instance);
        capture.cutBarrier(command.epoch, command.checkpointId, this.host, counted);
        return;
      }
      case 'checkpoint.abort':
        capture.abortBarrier(command.epoch, command.checkpointId, this.host);
        return;
      case 'replication.resync':
        try {
          const { resyncId, volumeIds, requestedAt, reason } = command;
          if (capture.startResync({ resyncId, volumeIds, requestedAt, reason }) === 'duplicate') {
            this.logger.log(`resync ${resyncId} of VPG ${capture.vpg.name} was already started here; ignored`);
          }
        } catch (err) {
          // Refused (a volume not in the VPG, another resync running): nothing was done.
          this.logger.warn(`resync ${command.resyncId} of VPG ${capture.vpg.name} refused: ${err instanceof Error ? err.message : String(err)}`);
        }
        return;
    }
  }

  private async onProgress(batch: MessageBatch): Promise<void> {
    for (const message of batch.messages) {
      const parsed = journalProgressSchema.safeParse(parseJson(message.value));
      // A VPG with several members gets one progress per member, in that member's seqs.
      if (parsed.success && (parsed.data.member ?? this.host) === this.host) {
        await this.captures.get(parsed.data.vpgId)?.confirm(parsed.data.appliedSeq);
      }
    }
  }

  /** First sight of a VPG: write its definition durably, create its volumes, start capturing. */
  private async protect(vpg: Vpg): Promise<void> {
    if (!vpg.vms.some((vm) => hostOf(vm) === this.host)) {
      this.elsewhere.add(vpg.id);
      return;
    }
    const dir = join(this.root, vpg.id);
    await mkdir(join(dir, 'volumes'), { recursive: true });
    const tmp = join(dir, 'vpg.json.tmp');
    await writeFile(tmp, JSON.stringify(vpg, null, 2));
    const handle = await open(tmp, 'r');
    await handle.sync();
    await handle.close();
    await rename(tmp, join(dir, 'vpg.json'));
    await this.activate(vpg);
    this.logger.log(`protecting VPG ${vpg.name} (${vpg.id})`);
  }

  private async activate(vpg: Vpg): Promise<void> {
    let pending = this.opening.get(vpg.id);
    if (!pending) {
      const multiMember = vpgMembers(vpg).length > 1;
      if (multiMember) {
        this.multiMember.add(vpg.id);
      }
      pending = VpgCapture.open(vpg, join(this.root, vpg.id), this.producer, {
        ...(multiMember ? { member: this.host } : {}),
        payloads: this.payloadRing(),
        logLimitBytes: this.logLimitBytes,
        flushLinkWaitMs: this.flushLinkWaitMs,
      });
      this.opening.set(vpg.id, pending);
    }
    const capture = await pending;
    this.captures.set(vpg.id, capture);
    this.opening.delete(vpg.id);
  }

  /**
   * The memory every VPG's NBD write payloads are received into (see PayloadRing): one for the process,
   * so its size does not grow with the number of VPGs; made when the first capture opens.
   */
  private payloadRing(): PayloadRing | undefined {
    if (this.payloadRingBytes > 0) {
      this.payloads ??= new PayloadRing(this.payloadRingBytes, { poison: this.poisonReleasedPayloads });
    }
    return this.payloads;
  }

  private async readDefinition(vpgId: string): Promise<Vpg | undefined> {
    try {
      const text = await readFile(join(this.root, vpgId, 'vpg.json'), 'utf8');
      return vpgSchema.parse(JSON.parse(text)) as Vpg;
    } catch (err) {
      this.logger.error(`ignoring ${join(this.root, vpgId)}: ${err instanceof Error ? err.message : String(err)}`);
      return undefined;
    }
  }
}

function parseJson(value: Buffer): unknown {
  try {
    return JSON.parse(value.toString('utf8'));
  } catch {
    return undefined;
  }
}
