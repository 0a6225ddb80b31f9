import { writeFile, open } from 'node:fs/promises';
import { join } from 'node:path';
import { Inject, Injectable, type BeforeApplicationShutdown } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { APP_CONFIG, type AppConfig } from '@cdp/config';
import { type Checkpoint, type Volume } from '@cdp/domain';
import { JournalReader, type CheckpointQuery, type JournalStatus } from '@cdp/journal-store';

/** Recovery: checkpoints and point-in-time images, read from the journal index and segments. */
@Injectable()
export class RecoveryService implements BeforeApplicationShutdown {
  private readonly reader: JournalReader;

  constructor(dataSource: DataSource, @Inject(APP_CONFIG) config: AppConfig) {
    this.reader = new JournalReader(dataSource, join(config.dataDir, 'journal'));
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

  image(vpgId: string, volume: Volume, cut: number): AsyncGenerator<Buffer> {
    return this.reader.image(vpgId, volume.index, volume.sizeBytes, cut);
  }

  /** Writes the image of a volume at a cut to a file (created or truncated), durably. */
  async writeImage(vpgId: string, volume: Volume, cut: number, path: string): Promise<void> {
    await writeFile(path, Buffer.alloc(0));
    const handle = await open(path, 'r+');
    try {
      let position = 0;
      for await (const chunk of this.image(vpgId, volume, cut)) {
        await handle.write(chunk, 0, chunk.length, position);
        position += chunk.length;
      }
      await handle.sync();
    } finally {
      await handle.close();
    }
  }
}
