import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InProcessBus } from '@cdp/bus';
import { loadConfig } from '@cdp/config';
import { oneVmVpg, tempDir, type TempDir } from '@cdp/testing';
import { type SplitterFrontEnd, SplitterService } from './splitter.service';

const vpg = oneVmVpg('6f1d2c3b-4a59-4e8f-9a7b-1c2d3e4f5a70', 'front-end-test', '0a1b2c3d-0000-4000-8000-000000000301', [
  { id: '0a1b2c3d-0000-4000-8000-000000000311', name: 'disk', index: 0, sizeBytes: 1024 * 1024, blockSize: 512 }
]);

describe('SplitterService front ends', () => {
  let dir: TempDir;
  let bus: InProcessBus;

  beforeEach(async () => {
    dir = await tempDir('splitter-service-');
    bus = new InProcessBus();
    await mkdir(join(dir.path, 'splitter', vpg.id), { recursive: true });
    await writeFile(join(dir.path, 'splitter', vpg.id, 'vpg.json'), JSON.stringify(vpg));
  });

  afterEach(async () => {
    await bus.close();
    await dir.cleanup();
  });

  it('starts them once the captures on disk are open and stops them before the captures close', async () => {
    const splitter = new SplitterService(bus, loadConfig({ CDP_DATA_DIR: dir.path }));
    const seen: string[] = [];
    const frontEnd: SplitterFrontEnd = {
      start: () => {
        seen.push(`start with ${splitter.allCaptures().length} capture(s)`);
        return Promise.resolve();
      },
      // A write still in flight when the stop begins must reach an open capture.
      stop: async () => {
        await splitter.capture(vpg.id).write(vpg.vms[0]!.volumes[0]!.id, 0, Buffer.alloc(512, 7), true);
        seen.push('stopped after a last write');
      },
    };
    splitter.attachFrontEnd(frontEnd);
    await splitter.onApplicationBootstrap();
    await splitter.beforeApplicationShutdown();
    expect(seen).toEqual(['start with 1 capture(s)', 'stopped after a last write']);
    expect(splitter.allCaptures()).toEqual([]);
  });
});
