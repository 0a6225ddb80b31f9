import { randomUUID } from 'node:crypto';
import { Inject, Injectable, Logger, type OnApplicationBootstrap, type BeforeApplicationShutdown } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { BUS, type Bus, type BusConsumer, type BusProducer, type MessageBatch } from '@cdp/bus';
import { APP_CONFIG, type AppConfig } from '@cdp/config';
import {
  CorruptRecordError,
  RecordKind,
  TOPICS,
  splitRecordBatch,
  type DomainEventMessage,
  type JournalProgress,
  type RestartRecord,
  type SplitterCommand,
} from '@cdp/contracts';
import { JournalCompactor, JournalPromoter, JournalStore, PromotionPostponedError, type OutboxMessage, type PromotionResult, type VerifiedRecord } from '@cdp/journal-store';
import { memberOfVolume, vpgMembers, type Checkpoint, type Vpg } from '@cdp/domain';
import { commitRuns, planApply } from './apply-plan';
import { CommitPacer } from './commit-pacer';
import { MemberMerge, committedPositions } from './member-merge';
import { OutboxRelay } from './outbox.relay';

export interface JournalWriterStatus {
  readonly appliedRecords: number;
  readonly duplicateRecords: number;
  readonly gaps: number;
  /** Restarts of an order taken in place of seqs no splitter could ship again (see planApply). */
  readonly restarts: number;
  readonly corruptMessages: number;
  /** Batches whose journaling failed (a full journal disk, PostgreSQL away); each is taken again. */
  readonly commitFailures: number;
  /** Since when journaling has been failing, and the last error; null while it succeeds. */
  readonly failing: { readonly since: string; readonly failures: number; readonly error: string } | null;
}

/** How long to wait for a requested replay to arrive before asking again. */
const REPLAY_RETRY_MS = 5_000;
/**
 * How often the journal index of busy regions is compacted (see JournalCompactor). Under random
 * writes a region gets a row per commit, a few hundred in this time; merging them this soon keeps a
 * region's rows on a few heap pages for the point-in-time views that load it.
 */
const COMPACTION_INTERVAL_MS = 2_000;

/**
 * Journal writer: consumes the recovery-site topic and makes each VPG's journal an exact prefix of
 * its write order, once per seq. Per bus batch (one partition, so each VPG's records in order): group
 * records by VPG, plan (drop duplicates, stop at a gap or a corrupt record), commit through the
 * JournalStore, and only after the commit report progress and newly recoverable checkpoints. The bus
 * offset is committed after all of that (the handler resolves), so a crash anywhere redelivers and
 * the duplicates are dropped by seq.
 *
 * It also drives promotion (see JournalPromoter): every promotionIntervalSeconds, one round promotes
 * every VPG that has a journal, one VPG at a time. Rounds never overlap (a tick that finds one running
 * is skipped). A failed promotion is logged and simply tried again next round: promotion shares the
 * JournalStore with journaling but never holds up or fails a commit.
 *
 * And compaction of the index (see JournalCompactor): every COMPACTION_INTERVAL_MS, the regions that
 * commits gave many small rows are merged, one VPG at a time, in rounds that never overlap either.
 * A failed round is logged and the next one tries again; journaling never waits for it.
 */
@Injectable()
export class JournalWriterService implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger('journal-writer');
  readonly store: JournalStore;
  private consumer: BusConsumer | undefined;
  private readonly producer: BusProducer;
  private readonly outbox: OutboxRelay;
  /** Definitions of the VPGs seen, and the merges of those with several members (see MemberMerge). */
  private readonly knownVpgs = new Map<string, Vpg>();
  private readonly merges = new Map<string, MemberMerge>();
  private readonly replayRequested = new Map<string, { fromSeq: number; at: number }>();
  private readonly counters = { appliedRecords: 0, duplicateRecords: 0, gaps: 0, restarts: 0, corruptMessages: 0, commitFailures: 0 };
  private failing: { since: Date; failures: number; error: string } | undefined;
  private readonly promoter: JournalPromoter;
  private readonly promotionIntervalMs: number;
  private promotionTimer: NodeJS.Timeout | undefined;
  private promotionRound: Promise<PromotionResult[]> | undefined;
  private readonly compactor: JournalCompactor;
  private compactionTimer: NodeJS.Timeout | undefined;
  private compactionRound: Promise<void> | undefined;
  private readonly pacer: CommitPacer;
  private stopped = false;

  constructor(
    @Inject(BUS) private readonly bus: Bus,
    @Inject(APP_CONFIG) config: AppConfig,
    private readonly dataSource: DataSource,
  ) {
    this.producer = bus.createProducer();
    this.outbox = new OutboxRelay(dataSource, this.producer);
    this.compactor = new JournalCompactor(dataSource);
    this.store = new JournalStore(dataSource, config.journalDir, { onIndexed: (vpgId, vpgKey, rows) => this.compactor.noteCommitted(vpgId, vpgKey, rows) });
    this.promoter = new JournalPromoter(dataSource, this.store);
    this.promotionIntervalMs = config.promotionIntervalSeconds * 1000;
    this.pacer = new CommitPacer(config.journalCommitIntervalMs);
  }

  async onApplicationBootstrap(): Promise<void> {
    // Whatever a previous run committed but did not get to publish goes out first.
    await this.outbox.publish().catch((err: unknown) => this.logger.warn(`outbox not yet published: ${err instanceof Error ? err.message : String(err)}`));
    this.consumer = this.bus.createConsumer({ groupId: 'journal-writer', topics: [TOPICS.recoveryWrites], start: 'earliest' });
    await this.consumer.run((batch) => this.onBatch(batch));
    this.promotionTimer = setInterval(() => {
      if (this.promotionRound) {
        return;
      }
      this.promoteAll().catch((err: unknown) => {
        // Each VPG's failure was logged inside the round; anything else stopped the round itself.
        if (!(err instanceof AggregateError)) {
          this.logger.error(`promotion round failed, will retry: ${err instanceof Error ? err.message : String(err)}`);
        }
      });
    }, this.promotionIntervalMs).unref();
    this.compactionTimer = setInterval(() => {
      if (this.compactionRound || this.stopped) {
        return;
      }
      const round = this.compactAll().finally(() => (this.compactionRound = undefined));
      this.compactionRound = round;
    }, COMPACTION_INTERVAL_MS).unref();
    this.logger.log(`journaling ${TOPICS.recoveryWrites} into ${this.store.rootDir}`);
  }

  async beforeApplicationShutdown(): Promise<void> {
    this.stopped = true;
    this.pacer.stop();
    clearInterval(this.promotionTimer);
    clearInterval(this.compactionTimer);
    await this.promotionRound?.catch(() => undefined);
    await this.compactionRound;
    await this.consumer?.stop();
    await this.outbox.stop();
    await this.store.close();
  }

  /**
   * One promotion round over every VPG with a journal, as of `now` (default: the current time; tests
   * pass a later time to make history old). Waits for a round already running, so rounds never
   * overlap. Each VPG's failure is logged and the round goes on; the round then rejects with all of
   * them, and the next round tries those VPGs again. A VPG postponed because image readers held its
   * replica lock is only warned about and left out of the results.
   */
  async promoteAll(now?: Date): Promise<PromotionResult[]> {
    while (this.promotionRound) {
      await this.promotionRound.catch(() => undefined);
    }
    if (this.stopped) {
      throw new Error('the journal writer is shutting down');
    }
    const round = this.runPromotionRound(now);
    this.promotionRound = round;
    try {
      return await round;
    } finally {
      this.promotionRound = undefined;
    }
  }

  /** One compaction round: every VPG with regions due, one at a time. Failures are logged, never thrown. */
  private async compactAll(): Promise<void> {
    for (const vpgId of this.compactor.vpgs()) {
      if (this.stopped) {
        return;
      }
      try {
        const result = await this.compactor.compact(vpgId);
        if (result.rowsMerged > 0) {
          this.logger.debug(`VPG ${vpgId}: compacted ${result.regions} region(s) of the journal index, ${result.rowsMerged} rows into ${result.rowsWritten}`);
        }
      } catch (err) {
        this.logger.warn(`VPG ${vpgId}: journal index compaction failed, will retry: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  }

  status(): JournalWriterStatus {
    const failing = this.failing ? { since: this.failing.since.toISOString(), failures: this.failing.failures, error: this.failing.error } : null;
    return { ...this.counters, failing };
  }

  private async runPromotionRound(now: Date | undefined): Promise<PromotionResult[]> {
    const results: PromotionResult[] = [];
    const failures: unknown[] = [];
    for (const vpgId of await this.promoter.vpgsWithJournal()) {
      if (this.stopped) {
        break;
      }
      try {
        const started = performance.now();
        const result = await this.promoter.promote(vpgId, now);
        results.push(result);
        if (result.promoted) {
          const oldest = result.oldestCheckpoint;
          // How long it took says whether promotion keeps up with what the VPG journals.
          const seconds = (performance.now() - started) / 1000;
          this.logger.log(
            `VPG ${vpgId}: promoted ${result.writes} writes (${result.bytes} bytes) into the replica in ${seconds.toFixed(1)} s, replica seq ${result.fromSeq} -> ${result.replicaSeq}; ` +
              `removed ${result.checkpointsRemoved} checkpoints and ${result.segmentsDeleted} segments; ` +
              `oldest checkpoint kept: ${oldest ? `${oldest.id} (cut ${oldest.cut}, captured ${oldest.capturedAt})` : 'none'}` +
              (result.sizeLimited ? '; the journal was over its size limit (journalSizeLimitMb), so its history is shorter than configured' : ''),
          );
        }
      } catch (err) {
        if (err instanceof PromotionPostponedError) {
          this.logger.warn(err.message);
          continue;
        }
        failures.push(err);
        this.logger.error(`VPG ${vpgId}: promotion failed, will retry next round: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    if (failures.length > 0) {
      throw new AggregateError(failures, `promotion failed for ${failures.length} VPG(s)`);
    }
    return results;
  }

  /**
   * One bus batch, then the group commit's pause (CommitPacer): the handler resolves only when the next
   * batch may be taken, and what arrives meanwhile waits in the bus for it. Progress and events of this
   * batch are out before the pause.
   */
  private async onBatch(batch: MessageBatch): Promise<void> {
    this.pacer.started();
    try {
      await this.journal(batch);
    } catch (err) {
      // The bus delivers the batch again (with backoff): said once per episode, not per retry.
      this.counters.commitFailures++;
      const error = err instanceof Error ? err.message : String(err);
      if (!this.failing) {
        this.failing = { since: new Date(), failures: 0, error };
        this.logger.error(`journaling failed (${error}); the batch is taken again until it succeeds, and nothing is acknowledged meanwhile`);
      }
      this.failing.failures++;
      this.failing.error = error;
      throw err;
    }
    if (this.failing) {
      this.logger.warn(`journaling succeeds again, after ${this.failing.failures} failed attempt(s) since ${this.failing.since.toISOString()}`);
      this.failing = undefined;
    }
    await this.pacer.ready();
  }

  private async journal(batch: MessageBatch): Promise<void> {
    const byVpg = new Map<string, Buffer[]>();
    for (const message of batch.messages) {
      let records: Buffer[];
      try {
        records = splitRecordBatch(message.value);
      } catch (err) {
        if (!(err instanceof CorruptRecordError)) {
          throw err;
        }
        // The records it held will be missing; the gap that follows asks for them again.
        this.counters.corruptMessages++;
        this.logger.error(`dropping a corrupt message for VPG ${message.key}: ${err.message}`);
        continue;
      }
      const list = byVpg.get(message.key) ?? [];
      list.push(...records);
      byVpg.set(message.key, list);
    }
    const events: DomainEventMessage[] = [];
    const progress: JournalProgress[] = [];
    let committedEvents = false;
    for (const [vpgId, records] of byVpg) {
      const vpg = await this.definition(vpgId);
      if (!vpg) {
        this.logger.warn(`dropping ${records.length} records for VPG ${vpgId}, which is not defined`);
        continue;
      }
      if (vpgMembers(vpg).length > 1) {
        committedEvents = (await this.applyMerged(vpg, records, progress, events)) || committedEvents;
        continue;
      }
      let appliedSeq = await this.store.appliedSeq(vpgId);
      const plan = planApply(appliedSeq, records);
      this.counters.duplicateRecords += plan.duplicates;
      for (const run of commitRuns(plan.apply)) {
        const first = (run[0] as VerifiedRecord).decoded;
        const restart = first.kind === RecordKind.Restart ? restartEvent(vpgId, first, appliedSeq + 1, null) : undefined;
        // Checkpoint and restart events go through the outbox: written in the commit's transaction, so
        // a crash after the commit cannot lose them (the records would come back only as duplicates).
        const result = await this.store.commit(vpgId, run, {
          outbox: (recorded) => [...(restart ? [outboxMessage(restart)] : []), ...checkpointEvents(vpgId, recorded)],
        });
        this.counters.appliedRecords += run.length;
        this.replayRequested.delete(vpgId);
        if (restart) {
          this.logRestart(restart, result.droppedRequests);
        }
        appliedSeq = result.appliedSeq;
        committedEvents ||= result.checkpoints.length > 0 || restart !== undefined;
      }
      // Also when everything was a duplicate: a splitter whose log never handed those seqs out (its
      // directory restored from a backup) learns that the journal is ahead of it (VpgCapture.confirm).
      if (plan.apply.length > 0 || plan.duplicates > 0) {
        progress.push({ vpgId, appliedSeq, at: new Date().toISOString() });
      }
      if (plan.gap) {
        await this.onGap(vpgId, plan.gap, events);
      }
    }
    if (progress.length > 0) {
      await this.producer.send(
        TOPICS.journalProgress,
        progress.map((p) => ({ key: p.vpgId, value: Buffer.from(JSON.stringify(p)) })),
      );
    }
    if (committedEvents) {
      // Published now in the common case; if the bus refuses, the relay retries on its own and the
      // batch is not failed for it (its records are journaled).
      await this.outbox.publish().catch(() => undefined);
    }
    if (events.length > 0) {
      // Gap and corruption notices: informational, and raised again while the gap lasts (and a merge's
      // restart that had nothing to commit with it).
      await this.producer.send(
        TOPICS.events,
        events.map((e) => ({ key: e.vpgId, value: Buffer.from(JSON.stringify(e)) })),
      );
    }
  }

  /**
   * A VPG whose VMs sit on several hosts: the members' orders merged into the journal's (MemberMerge),
   * the merge state committed with the records, progress per member from what was committed. Returns
   * whether the commit recorded checkpoints.
   */
  private async applyMerged(vpg: Vpg, records: readonly Buffer[], progress: JournalProgress[], events: DomainEventMessage[]): Promise<boolean> {
    let merge = this.merges.get(vpg.id);
    if (!merge) {
      merge = new MemberMerge(vpgMembers(vpg), memberOfVolume(vpg), await this.store.members(vpg.id));
      this.merges.set(vpg.id, merge);
    }
    const plan = merge.plan(await this.store.appliedSeq(vpg.id), records);
    this.counters.duplicateRecords += plan.duplicates;
    const restarts = plan.restarts.map((r) => restartEvent(vpg.id, r.record, r.voidFrom, r.member));
    let recorded = false;
    if (plan.apply.length > 0) {
      let result;
      try {
        result = await this.store.commit(vpg.id, plan.apply, {
          outbox: (checkpoints) => [...restarts.map(outboxMessage), ...checkpointEvents(vpg.id, checkpoints)],
          members: plan.state,
        });
      } catch (err) {
        // The merge moved on in memory; start again from what is committed (the records come again).
        this.merges.delete(vpg.id);
        throw err;
      }
      this.counters.appliedRecords += plan.apply.length;
      const at = new Date().toISOString();
      // Only what is committed: a member's splitter may forget its records up to here.
      for (const [member, position] of Object.entries(plan.state.members)) {
        progress.push({ vpgId: vpg.id, member, appliedSeq: position.applied, at });
      }
      recorded = result.checkpoints.length > 0 || restarts.length > 0;
    } else {
      // Nothing to commit (the restart alone came): its state is committed with the member's next records.
      events.push(...restarts);
      if (plan.duplicates > 0) {
        // Nothing but duplicates: the members' committed positions, so a splitter whose log never handed
        // those seqs out learns that the journal is ahead of it (see the single-host case).
        const at = new Date().toISOString();
        for (const [member, applied] of committedPositions(await this.store.members(vpg.id))) {
          progress.push({ vpgId: vpg.id, member, appliedSeq: applied, at });
        }
      }
    }
    restarts.forEach((r) => this.logRestart(r, []));
    for (const replay of plan.replays) {
      const key = `${vpg.id}/${replay.member}`;
      const pending = this.replayRequested.get(key);
      if (pending && pending.fromSeq === replay.fromSeq && Date.now() - pending.at < REPLAY_RETRY_MS) {
        continue;
      }
      this.counters.gaps++;
      this.replayRequested.set(key, { fromSeq: replay.fromSeq, at: Date.now() });
      this.logger.warn(`VPG ${vpg.id}: ${replay.reason}; asking member ${replay.member} to replay from its seq ${replay.fromSeq}`);
      const command: SplitterCommand = { type: 'replication.replay', vpgId: vpg.id, member: replay.member, fromSeq: replay.fromSeq, reason: replay.reason };
      await this.producer.send(TOPICS.commands, [{ key: vpg.id, value: Buffer.from(JSON.stringify(command)) }]);
    }
    return recorded;
  }

  /** A restart was committed (or, in a merge, consumed): said loudly, since no checkpoint is recorded until its resync is complete. */
  private logRestart(restart: Extract<DomainEventMessage, { type: 'journal.order-restarted' }>, droppedRequests: readonly string[]): void {
    this.counters.restarts++;
    const { seq, voidFrom, resyncId, reason, member } = restart.data;
    this.logger.warn(
      `VPG ${restart.vpgId}: ${member === null ? 'the splitter' : `member ${member}`} restarted its order at seq ${seq} (${reason}): ` +
        (seq > voidFrom ? `seqs ${voidFrom} to ${seq - 1} are void; ` : '') +
        `resync ${resyncId} of every volume follows, and no checkpoint is recorded until it is complete` +
        (droppedRequests.length > 0
          ? `; ${droppedRequests.length} checkpoint request(s) sent before it and never recorded are dropped, not sent again (${droppedRequests.join(', ')})`
          : ''),
    );
  }

  /** Never skip a gap: ask the splitter to ship again from the first missing seq. */
  private async onGap(
    vpgId: string,
    gap: { expectedSeq: number; receivedSeq: number; reason: string },
    events: DomainEventMessage[],
  ): Promise<void> {
    const pending = this.replayRequested.get(vpgId);
    if (pending && pending.fromSeq === gap.expectedSeq && Date.now() - pending.at < REPLAY_RETRY_MS) {
      return;
    }
    this.counters.gaps++;
    this.replayRequested.set(vpgId, { fromSeq: gap.expectedSeq, at: Date.now() });
    this.logger.warn(`VPG ${vpgId}: ${gap.reason}; asking the splitter to replay from seq ${gap.expectedSeq}`);
    const command: SplitterCommand = { type: 'replication.replay', vpgId, fromSeq: gap.expectedSeq, reason: gap.reason };
    await this.producer.send(TOPICS.commands, [{ key: vpgId, value: Buffer.from(JSON.stringify(command)) }]);
    events.push(
      gap.receivedSeq < 0
        ? event(vpgId, 'journal.corrupt-record-rejected', { reason: gap.reason })
        : event(vpgId, 'journal.gap-detected', { expectedSeq: gap.expectedSeq, receivedSeq: gap.receivedSeq }),
    );
  }

  private async definition(vpgId: string): Promise<Vpg | undefined> {
    const known = this.knownVpgs.get(vpgId);
    if (known) {
      return known;
    }
    const rows = await this.dataSource.query<{ definition: Vpg }[]>(`SELECT definition FROM vpgs WHERE id = $1`, [vpgId]);
    const vpg = rows[0]?.definition;
    if (vpg) {
      this.knownVpgs.set(vpgId, vpg);
    }
    return vpg;
  }
}

/** The events a commit's recorded checkpoints give rise to, for the outbox. */
function checkpointEvents(vpgId: string, recorded: readonly Checkpoint[]): OutboxMessage[] {
  return recorded
    .flatMap((checkpoint) => [
      event(vpgId, 'checkpoint.recorded', { checkpoint }),
      ...(checkpoint.kind === 'tagged' ? [event(vpgId, 'checkpoint.tagged-inserted', { checkpoint })] : []),
    ])
    .map(outboxMessage);
}

function outboxMessage(e: DomainEventMessage): OutboxMessage {
  return { topic: TOPICS.events, key: e.vpgId, value: Buffer.from(JSON.stringify(e)) };
}

/** A restart taken by the journal; `voidFrom` is the first seq the journal lacked (the member's own, in a merge). */
function restartEvent(vpgId: string, record: RestartRecord, voidFrom: number, member: string | null): Extract<DomainEventMessage, { type: 'journal.order-restarted' }> {
  const { resyncId, reason } = record.restart;
  return event(vpgId, 'journal.order-restarted', { seq: record.seq, voidFrom: Math.min(voidFrom, record.seq), resyncId, reason, member }) as Extract<
    DomainEventMessage,
    { type: 'journal.order-restarted' }
  >;
}

function event<T extends DomainEventMessage['type']>(
  vpgId: string,
  type: T,
  data: Extract<DomainEventMessage, { type: T }>['data'],
): DomainEventMessage {
  return { id: randomUUID(), version: 1, vpgId, occurredAt: new Date().toISOString(), type, data } as DomainEventMessage;
}
