import { Inject, Injectable, type BeforeApplicationShutdown } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { APP_CONFIG, type AppConfig } from '@cdp/config';
import { historyStatus, type Checkpoint, type HistoryStatus, type Volume, type Vpg } from '@cdp/domain';
import {
  JournalReader,
  type CheckpointPage,
  type CheckpointPageQuery,
  type CheckpointQuery,
  type CheckpointStats,
  type JournalStatus,
  type PitView,
  type TimelineResult,
} from '@cdp/journal-store';

/** Recovery: checkpoints and point-in-time images, read from the journal index and segments. */
@Injectable()
export class RecoveryService implements BeforeApplicationShutdown {
  private readonly reader: JournalReader;

  constructor(dataSource: DataSource, @Inject(APP_CONFIG) config: AppConfig) {
    this.reader = new JournalReader(dataSource, config.journalDir);
  }

  async beforeApplicationShutdown(): Promise<void> {
    await this.reader.close();
  }

  status(vpgId: string): Promise<JournalStatus> {
    return this.reader.status(vpgId);
  }

  checkpoints(vpgId: string, query: CheckpointQuery): Promise<Checkpoint[]> {
    return this.reader.checkpoints(vpgId, query);
  }

  checkpoint(vpgId: string, checkpointId: string): Promise<Checkpoint> {
    return this.reader.checkpoint(vpgId, checkpointId);
  }

  /**
   * The recovery slider: at most 180 checkpoints of the last 24 hours, tagged and
   * application-consistent ones always included and marked (see checkpoint-timeline.ts for the rule).
   */
  timeline(vpgId: string, now: Date): Promise<TimelineResult> {
    return this.reader.timeline(vpgId, now);
  }

  /** The manual list of every checkpoint in a time range, a page at a time. */
  checkpointPage(vpgId: string, query: CheckpointPageQuery): Promise<CheckpointPage> {
    return this.reader.checkpointPage(vpgId, query);
  }

  /** Earliest, latest, count and count per kind. */
  checkpointStats(vpgId: string): Promise<CheckpointStats> {
    return this.reader.checkpointStats(vpgId);
  }

  /** Actual journal history against the VPG's configured history, with its status. */
  history(vpg: Vpg, journal: JournalStatus, now: Date): HistoryStatus {
    return historyStatus({
      oldestCheckpointAt: journal.oldestCheckpointAt ? new Date(journal.oldestCheckpointAt) : null,
      newestAt: journal.newestCheckpointAt ? new Date(journal.newestCheckpointAt) : null,
      now,
      settings: vpg.settings,
      protectedSince: new Date(vpg.createdAt),
    });
  }

  /** The volume at the cut, readable at any offset, until closed (it holds the VPG's history there). */
  openView(vpgId: string, volume: Volume, cut: number): Promise<PitView> {
    return this.reader.openView(vpgId, volume.index, volume.sizeBytes, cut);
  }

  /** The volume at any point in time inside the journal (see JournalReader.openViewAt). */
  openViewAt(vpgId: string, volume: Volume, at: Date): Promise<PitView> {
    return this.reader.openViewAt(vpgId, volume.index, volume.sizeBytes, at);
  }

  image(vpgId: string, volume: Volume, cut: number): AsyncGenerator<Buffer> {
    return this.reader.image(vpgId, volume.index, volume.sizeBytes, cut);
  }
}
