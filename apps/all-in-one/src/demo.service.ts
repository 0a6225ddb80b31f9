import { randomBytes } from 'node:crypto';
import { Injectable, Logger, type BeforeApplicationShutdown, type OnApplicationBootstrap } from '@nestjs/common';
import { volumesOf, type Vpg } from '@cdp/domain';
import { CheckpointSchedulerService } from '@cdp/checkpoint-scheduler';
import { RecoveryService, VpgService } from '@cdp/recovery-orchestrator';
import { SplitterService } from '@cdp/splitter';

const DEMO_VPG = 'demo';
const MiB = 1024 * 1024;

/**
 * The quick start's demo: a VPG of two VMs and three volumes that takes a steady random workload (ten
 * writes a second), with automatic checkpoints every 5 s, a tagged one every 30 s, one hour of journal
 * history, and a status line every 5 s.
 */
@Injectable()
export class DemoService implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger('demo');
  private timers: NodeJS.Timeout[] = [];
  private stopped = false;
  private tags = 0;

  constructor(
    private readonly vpgs: VpgService,
    private readonly splitter: SplitterService,
    private readonly scheduler: CheckpointSchedulerService,
    private readonly recovery: RecoveryService,
  ) {}

  async onApplicationBootstrap(): Promise<void> {
    const vpg = (await this.vpgs.list()).find((v) => v.name === DEMO_VPG) ?? (await this.create());
    const deadline = Date.now() + 30_000;
    while (!this.splitter.statuses().some((s) => s.vpgId === vpg.id)) {
      if (Date.now() > deadline) {
        throw new Error('the splitter did not pick up the demo VPG within 30 s');
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    this.logger.log(`demo VPG ${vpg.name} (${vpg.id}) is taking writes`);
    this.timers.push(setInterval(() => this.write(vpg), 100));
    this.timers.push(setInterval(() => void this.tag(vpg), 30_000));
    this.timers.push(setInterval(() => void this.report(vpg), 5_000));
  }

  beforeApplicationShutdown(): void {
    this.stopped = true;
    this.timers.forEach((t) => clearInterval(t));
  }

  private create(): Promise<Vpg> {
    return this.vpgs.create({
      name: DEMO_VPG,
      vms: [
        { name: 'web-01', volumes: [{ name: 'root', sizeBytes: 64 * MiB, blockSize: 512 }] },
        {
          name: 'db-01',
          volumes: [
            { name: 'root', sizeBytes: 64 * MiB, blockSize: 512 },
            { name: 'data', sizeBytes: 128 * MiB, blockSize: 4096 },
          ],
        },
      ],
      // One hour of history keeps the demo's journal to a few hundred MiB on a laptop.
      settings: { journalHistorySeconds: 3600, historyWarningSeconds: 2700, historyAlertSeconds: 900 },
    });
  }

  private write(vpg: Vpg): void {
    if (this.stopped) {
      return;
    }
    const volumes = volumesOf(vpg);
    const volume = volumes[Math.floor(Math.random() * volumes.length)];
    if (!volume) {
      return;
    }
    const length = volume.blockSize * (1 + Math.floor(Math.random() * 8));
    const offset = volume.blockSize * Math.floor(Math.random() * ((volume.sizeBytes - length) / volume.blockSize));
    this.splitter
      .capture(vpg.id)
      .write(volume.id, offset, randomBytes(length))
      .catch((err: unknown) => this.logger.error(`demo write failed: ${String(err)}`));
  }

  private async tag(vpg: Vpg): Promise<void> {
    this.tags++;
    await this.scheduler.request(vpg.id, 'tagged', `demo tag ${this.tags}`, null, 0).catch((err: unknown) => {
      this.logger.error(`tagged checkpoint failed: ${String(err)}`);
    });
  }

  private async report(vpg: Vpg): Promise<void> {
    try {
      const status = await this.recovery.status(vpg.id);
      const capture = this.splitter.capture(vpg.id).status();
      this.logger.log(
        `captured seq ${capture.lastSeq}, journaled ${status.appliedSeq}, ` +
          `${status.checkpointCount} checkpoints (newest ${status.newestCheckpointAt ?? 'none yet'})`,
      );
    } catch (err) {
      this.logger.error(`status failed: ${String(err)}`);
    }
  }
}
