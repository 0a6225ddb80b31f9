import { Logger } from '@nestjs/common';
import { type BusProducer } from '@cdp/bus';
import { TOPICS, type BarrierHeld, type SplitterCommand } from '@cdp/contracts';
import { vpgMembers, type CheckpointKind, type Vpg } from '@cdp/domain';

export interface BarrierRequest {
  readonly checkpointId: string;
  readonly kind: CheckpointKind;
  readonly name: string | null;
  readonly vmId: string | null;
}

export type BarrierOutcome = 'cut' | 'aborted';

export interface CoordinatorOptions {
  /**
   * How long every member has to report that it holds, from the prepare (default 1000 ms). Past it
   * the epoch is aborted and every member resumes: a member that is down or slow costs the others at
   * most this much write latency, and that checkpoint.
   */
  readonly reportTimeoutMs?: number;
}

interface Round {
  readonly members: ReadonlySet<string>;
  readonly holders: Map<string, string>;
  readonly done: (outcome: BarrierOutcome) => void;
}

const DEFAULT_REPORT_TIMEOUT_MS = 1_000;

/**
 * Coordinates checkpoints of VPGs with several members (hosts), two phases over the bus:
 *
 *   1. `checkpoint.prepare` to every member: each holds new writes and reports `checkpoint.held`;
 *   2. once every member has reported, `checkpoint.cut` naming the processes that reported: each
 *      puts its marker in its own order and releases its writes. If one does not report in time,
 *      `checkpoint.abort`: each voids the epoch and releases.
 *
 * One round at a time per VPG, in increasing epochs, so every member's order carries the same epochs
 * in the same order (the journal writer merges the orders epoch by epoch). A member also voids on its
 * own if neither cut nor abort reaches it within twice the report timeout, so a lost coordinator never
 * holds writes for long.
 */
export class BarrierCoordinator {
  private readonly logger = new Logger('checkpoint-barrier');
  private readonly rounds = new Map<string, Round>();
  private readonly tails = new Map<string, Promise<unknown>>();
  private lastEpoch = 0;
  private readonly reportTimeoutMs: number;
  private readonly outcomes = { cut: 0, aborted: 0 };

  constructor(
    private readonly producer: BusProducer,
    options: CoordinatorOptions = {},
  ) {
    this.reportTimeoutMs = options.reportTimeoutMs ?? DEFAULT_REPORT_TIMEOUT_MS;
  }

  /** Whether a round is running or queued for the VPG (an automatic tick then skips: the round is its checkpoint). */
  busy(vpgId: string): boolean {
    return this.tails.has(vpgId);
  }

  counts(): { readonly cut: number; readonly aborted: number } {
    return { ...this.outcomes };
  }

  /** Runs one coordinated checkpoint for `vpg` after any round already queued for it. */
  run(vpg: Vpg, request: BarrierRequest): Promise<BarrierOutcome> {
    const previous = this.tails.get(vpg.id) ?? Promise.resolve();
    const round = previous.catch(() => undefined).then(() => this.round(vpg, request));
    this.tails.set(vpg.id, round);
    void round
      .finally(() => {
        if (this.tails.get(vpg.id) === round) {
          this.tails.delete(vpg.id);
        }
      })
      .catch(() => undefined);
    return round;
  }

  /** A member's report (TOPICS.barrier). Reports of rounds already decided are ignored. */
  onHeld(held: BarrierHeld): void {
    const round = this.rounds.get(key(held.vpgId, held.epoch));
    if (!round || !round.members.has(held.member)) {
      return;
    }
    round.holders.set(held.member, held.instance);
    if (round.holders.size === round.members.size) {
      round.done('cut');
    }
  }

  private async round(vpg: Vpg, request: BarrierRequest): Promise<BarrierOutcome> {
    const members = vpgMembers(vpg);
    const epoch = Math.max(this.lastEpoch + 1, Date.now() * 1000);
    this.lastEpoch = epoch;
    const id = key(vpg.id, epoch);
    let timer: NodeJS.Timeout | undefined;
    const decided = new Promise<BarrierOutcome>((resolve) => {
      this.rounds.set(id, { members: new Set(members), holders: new Map(), done: resolve });
      timer = setTimeout(() => resolve('aborted'), this.reportTimeoutMs);
    });
    try {
      await this.send({
        type: 'checkpoint.prepare',
        vpgId: vpg.id,
        epoch,
        checkpointId: request.checkpointId,
        kind: request.kind,
        name: request.name,
        vmId: request.vmId,
        members,
        holdTimeoutMs: 2 * this.reportTimeoutMs,
        requestedAt: new Date().toISOString(),
      });
      const outcome = await decided;
      const round = this.rounds.get(id);
      if (outcome === 'cut' && round) {
        await this.send({
          type: 'checkpoint.cut',
          vpgId: vpg.id,
          epoch,
          checkpointId: request.checkpointId,
          holders: [...round.holders].map(([member, instance]) => ({ member, instance })),
        });
      } else {
        const missing = members.filter((m) => !round?.holders.has(m));
        this.logger.warn(`VPG ${vpg.name}: coordinated checkpoint epoch ${epoch} aborted, no report from ${missing.join(', ')} within ${this.reportTimeoutMs} ms`);
        await this.send({ type: 'checkpoint.abort', vpgId: vpg.id, epoch, checkpointId: request.checkpointId, reason: `no report from ${missing.join(', ')}` });
      }
      this.outcomes[outcome]++;
      return outcome;
    } finally {
      clearTimeout(timer);
      this.rounds.delete(id);
    }
  }

  private async send(command: SplitterCommand): Promise<void> {
    await this.producer.send(TOPICS.commands, [{ key: command.vpgId, value: Buffer.from(JSON.stringify(command)) }]);
  }
}

function key(vpgId: string, epoch: number): string {
  return `${vpgId}/${epoch}`;
}
