import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Checkpoint, type Vpg } from '@cdp/domain';
import { type PitExport } from '@cdp/recovery-orchestrator';
import { itWithTools, randomBuffer, runToolOk, seededRandom, type ApiClient } from '@cdp/testing';
import { createProtectedVpg, startTestApp, type TestApp } from './all-in-one.test-app';

/**
 * A real file system through the whole product, with real tools only: ext4 images made with
 * mke2fs (holding files) are written into a protected volume over the splitter's NBD export by
 * qemu-img, checkpoints are tagged between versions, and each checkpoint is recovered through a
 * point-in-time NBD export: the recovered image equals that version byte for byte, passes
 * `e2fsck -fn`, and holds exactly that version's files (read back with debugfs, no mount needed).
 */
const MiB = 1024 * 1024;

describe('ext4 over NBD, recovered at each checkpoint', () => {
  let testApp: TestApp;
  let api: ApiClient;

  beforeAll(async () => {
    testApp = await startTestApp();
    api = testApp.api;
  });

  afterAll(async () => {
    await testApp?.close();
  });

  itWithTools(['mke2fs', 'e2fsck', 'debugfs', 'qemu-img', 'qemu-io', 'nbdcopy'], 'each version of the file system comes back whole', async () => {
    const vpg: Vpg = await createProtectedVpg(api, {
      name: 'file-server',
      vms: [
        { name: 'fs', volumes: [{ name: 'home', sizeBytes: 32 * MiB, blockSize: 4096 }] },
        { name: 'db', volumes: [{ name: 'data', sizeBytes: 8 * MiB, blockSize: 512 }] },
      ],
    });
    const volume = vpg.vms[0]!.volumes[0]!;
    const dbVolume = vpg.vms[1]!.volumes[0]!;
    const nbd = await api.ok<{ host: string; port: number }>('GET', '/splitter/nbd');
    const protectedUrl = `nbd://${nbd.host}:${nbd.port}/${vpg.name}/fs/home`;
    const dbUrl = `nbd://${nbd.host}:${nbd.port}/${vpg.name}/db/data`;
    const random = seededRandom(2026);
    // The other VM's volume takes qemu-io pattern writes between the file system's versions.
    const db = Buffer.alloc(dbVolume.sizeBytes);

    // Three versions: files added, changed and removed between them.
    const versions: { files: Map<string, Buffer>; image: string; db: Buffer; checkpoint?: Checkpoint }[] = [];
    let files = new Map<string, Buffer>();
    for (let version = 1; version <= 3; version++) {
      files = new Map(files);
      for (let i = 0; i < 8; i++) {
        files.set(`/docs/v${version}-file${i}.bin`, randomBuffer(random, 1 + Math.floor(random() * 200_000)));
      }
      if (version > 1) {
        files.set('/docs/v1-file0.bin', randomBuffer(random, 50_000));
        files.delete('/docs/v1-file1.bin');
      }
      const tree = join(testApp.dataDir, `tree-${version}`);
      mkdirSync(join(tree, 'docs'), { recursive: true });
      for (const [path, content] of files) {
        writeFileSync(join(tree, path), content);
      }
      const image = join(testApp.dataDir, `fs-${version}.img`);
      await runToolOk('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-E', 'root_owner=0:0', '-d', tree, image, '32M']);
      await runToolOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', image, protectedUrl]);
      const writes: string[] = [];
      for (let i = 0; i < 6; i++) {
        const pattern = 1 + Math.floor(random() * 254);
        const length = 512 * (1 + Math.floor(random() * 128));
        const offset = 512 * Math.floor(random() * ((db.length - length) / 512));
        writes.push('-c', `write -P ${pattern} ${offset} ${length}`);
        db.fill(pattern, offset, offset + length);
      }
      await runToolOk('qemu-io', ['-f', 'raw', dbUrl, ...writes]);
      const checkpoint = (await api.ok<{ checkpoint: Checkpoint }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name: `version ${version}` })).checkpoint;
      versions.push({ files, image, db: Buffer.from(db), checkpoint });
    }

    for (const [index, version] of versions.entries()) {
      const opened = await api.ok<PitExport>('POST', `/vpgs/${vpg.id}/checkpoints/${version.checkpoint!.id}/exports`, { volumeId: volume.id });
      const recovered = join(testApp.dataDir, `recovered-${index + 1}.img`);
      await runToolOk('nbdcopy', [opened.url, recovered]);
      expect((await api.json('DELETE', `/exports/${opened.id}`)).status).toBe(204);

      expect(readFileSync(recovered).equals(readFileSync(version.image))).toBe(true);
      await runToolOk('e2fsck', ['-fn', recovered]);
      const listing = (await runToolOk('debugfs', ['-R', 'ls -p /docs', recovered])).stdout;
      const names = [...listing.matchAll(/\/([^/\n]+\.bin)\//g)].map((m) => `/docs/${m[1]}`).sort();
      expect(names).toEqual([...version.files.keys()].sort());
      for (const [path, content] of version.files) {
        const dumped = join(testApp.dataDir, `dump-${index}.bin`);
        await runToolOk('debugfs', ['-R', `dump ${path} ${dumped}`, recovered]);
        expect(readFileSync(dumped).equals(content)).toBe(true);
      }
      const dbExport = await api.ok<PitExport>('POST', `/vpgs/${vpg.id}/checkpoints/${version.checkpoint!.id}/exports`, { volumeId: dbVolume.id });
      const dbRecovered = join(testApp.dataDir, `db-${index + 1}.img`);
      await runToolOk('nbdcopy', [dbExport.url, dbRecovered]);
      expect((await api.json('DELETE', `/exports/${dbExport.id}`)).status).toBe(204);
      expect(readFileSync(dbRecovered).equals(version.db)).toBe(true);
    }
  });
});
