import { readdirSync, openSync, writeSync, closeSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { Client } from 'pg';
import { type Checkpoint, type Vpg } from '@cdp/domain';
import { type ApiClient } from '@cdp/testing';
import { createProtectedVpg, startTestApp, type TestApp } from './all-in-one.test-app';

/**
 * Bad input gets a clear error and changes nothing: the splitter's seq does not move, no VPG or
 * checkpoint appears. A journal record whose checksum does not match is reported as corrupt when
 * read, never returned as data.
 */
interface ErrorBody {
  error: string;
  message: string;
}

describe('bad input', () => {
  let testApp: TestApp;
  let api: ApiClient;
  let vpg: Vpg;
  const unknownId = '00000000-0000-4000-8000-000000000000';

  beforeAll(async () => {
    testApp = await startTestApp();
    api = testApp.api;
    vpg = await createProtectedVpg(api, {
      name: 'bad-input',
      vms: [{ name: 'vm', volumes: [{ name: 'disk', sizeBytes: 1024 * 1024, blockSize: 512 }] }],
      settings: { checkpointIntervalSeconds: 60 },
    });
  });

  afterAll(async () => {
    await testApp?.close();
  });

  const volumeId = (): string => vpg.vms[0]!.volumes[0]!.id;
  const lastSeq = async (): Promise<number> => (await api.ok<{ lastSeq: number }>('GET', `/splitter/vpgs/${vpg.id}`)).lastSeq;
  const put = (path: string, body: Buffer | string, contentType = 'application/octet-stream'): Promise<Response> =>
    fetch(`${api.baseUrl}/api${path}`, { method: 'PUT', headers: { 'content-type': contentType }, body });

  async function expectRejectedWrite(path: string, body: Buffer | string, status: number, message: RegExp, contentType?: string): Promise<void> {
    const before = await lastSeq();
    const response = await put(path, body, contentType);
    const answer = (await response.json()) as ErrorBody;
    expect(response.status).toBe(status);
    expect(answer.message).toMatch(message);
    expect(await lastSeq()).toBe(before);
  }

  it('rejects writes past the end, at negative or malformed offsets, and to unknown volumes or VPGs', async () => {
    const base = `/splitter/vpgs/${vpg.id}/volumes/${volumeId()}/data`;
    await expectRejectedWrite(`${base}?offset=${1024 * 1024 - 100}`, Buffer.alloc(101), 400, /past the end/);
    await expectRejectedWrite(`${base}?offset=-512`, Buffer.alloc(512), 400, /offset must be a non-negative integer/);
    await expectRejectedWrite(`${base}?offset=abc`, Buffer.alloc(512), 400, /offset/);
    await expectRejectedWrite(`${base}`, Buffer.alloc(512), 400, /offset/);
    await expectRejectedWrite(`${base}?offset=0&bogus=1`, Buffer.alloc(512), 400, /bogus|unrecognized/i);
    await expectRejectedWrite(`${base}?offset=0`, Buffer.alloc(0), 400, /body|length/);
    await expectRejectedWrite(`${base}?offset=0`, 'text', 400, /octet-stream/, 'text/plain');
    await expectRejectedWrite(`/splitter/vpgs/${vpg.id}/volumes/${unknownId}/data?offset=0`, Buffer.alloc(512), 404, /not in VPG/);
    await expectRejectedWrite(`/splitter/vpgs/${vpg.id}/volumes/not-a-uuid/data?offset=0`, Buffer.alloc(512), 400, /UUID/);
    const response = await put(`/splitter/vpgs/${unknownId}/volumes/${volumeId()}/data?offset=0`, Buffer.alloc(512));
    expect(response.status).toBe(404);
    expect(((await response.json()) as ErrorBody).message).toMatch(/not protected/);
  });

  it('rejects empty, too long and malformed checkpoint requests and records nothing', async () => {
    const count = async (): Promise<number> => (await api.ok<Checkpoint[]>('GET', `/vpgs/${vpg.id}/checkpoints`)).length;
    const before = await count();
    const cases: [unknown, RegExp][] = [
      [{ name: '' }, /must not be empty/],
      [{ name: '   ' }, /must not be empty/],
      [{ name: 'x'.repeat(129) }, /at most 128/],
      [{ name: 'a\u0007b' }, /control characters/],
      [{ name: 42 }, /name/],
      [{}, /name/],
      [{ name: 'ok', extra: true }, /extra|unrecognized/i],
    ];
    for (const [body, message] of cases) {
      const { status, body: answer } = await api.json<ErrorBody>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=0`, body);
      expect(status).toBe(400);
      expect(answer.message).toMatch(message);
    }
    const unknown = await api.json<ErrorBody>('POST', `/vpgs/${unknownId}/checkpoints?waitMs=0`, { name: 'x' });
    expect(unknown.status).toBe(404);
    const malformed = await api.json<ErrorBody>('POST', `/vpgs/${vpg.id}/checkpoints`, '{"name": ');
    expect(malformed.status).toBe(400);
    expect(malformed.body.message).toMatch(/not valid JSON/);
    const pg = new Client({ connectionString: testApp.databaseUrl });
    await pg.connect();
    try {
      expect((await pg.query('SELECT count(*)::int AS n FROM checkpoint_requests')).rows[0]).toEqual({ n: 0 });
    } finally {
      await pg.end();
    }
    expect(await count()).toBe(before);
  });

  it('rejects malformed VPG definitions and creates nothing', async () => {
    const countVpgs = async (): Promise<number> => (await api.ok<Vpg[]>('GET', '/vpgs')).length;
    const before = await countVpgs();
    const vm = (volume: Record<string, unknown>): Record<string, unknown> => ({ name: 'vm', volumes: [{ name: 'd', ...volume }] });
    const cases: [unknown, number, RegExp][] = [
      [{ name: 'x', vms: [] }, 400, /vms/],
      [{ name: '', vms: [vm({ sizeBytes: 4096 })] }, 400, /name/],
      [{ name: 'x', vms: [vm({ sizeBytes: 1000, blockSize: 512 })] }, 400, /not a multiple of its block size/],
      [{ name: 'x', vms: [vm({ sizeBytes: 4096, blockSize: 1024 })] }, 400, /blockSize/],
      [{ name: 'x', vms: [vm({ sizeBytes: -4096 })] }, 400, /sizeBytes/],
      [{ name: 'x', vms: [vm({ sizeBytes: 4096 })], settings: { checkpointIntervalSeconds: 0 } }, 400, /checkpointIntervalSeconds/],
      [{ name: 'x', vms: [vm({ sizeBytes: 4096 })], settings: { checkpointIntervalSeconds: 61 } }, 400, /checkpointIntervalSeconds/],
      [{ name: 'x', vms: [vm({ sizeBytes: 4096 })], settings: { journalSizeLimitMb: 0 } }, 400, /journalSizeLimitMb/],
      [{ name: 'x', vms: [vm({ sizeBytes: 4096 })], settings: { journalSizeLimitMb: '10G' } }, 400, /journalSizeLimitMb/],
      [{ name: 'x', vms: [vm({ sizeBytes: 4096 })], colour: 'red' }, 400, /colour|unrecognized/i],
      [{ name: 'bad-input', vms: [vm({ sizeBytes: 4096 })] }, 409, /already exists/],
      [{ name: 'x', vms: [{ name: 'a', volumes: [{ name: 'd', sizeBytes: 4096 }] }, { name: 'a', volumes: [{ name: 'd', sizeBytes: 4096 }] }] }, 400, /used twice/],
    ];
    for (const [body, status, message] of cases) {
      const answer = await api.json<ErrorBody>('POST', '/vpgs', body);
      expect({ status: answer.status, body }).toEqual({ status, body });
      expect(answer.body.message).toMatch(message);
    }
    expect((await api.json('GET', `/vpgs/${unknownId}`)).status).toBe(404);
    expect((await api.json('GET', '/vpgs/not-a-uuid')).status).toBe(400);
    expect(await countVpgs()).toBe(before);
  });

  it('reports a journal record whose checksum does not match as corrupt, never as data', async () => {
    const data = Buffer.alloc(4096, 0x5a);
    await api.write(vpg.id, volumeId(), 8192, data);
    const tagged = await api.ok<{ status: string; checkpoint: Checkpoint }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name: 'to-corrupt' });
    expect(tagged.status).toBe('recorded');
    const imagePath = `/vpgs/${vpg.id}/checkpoints/${tagged.checkpoint.id}/volumes/${volumeId()}/image`;
    const good = await api.bytes(imagePath);
    expect(good.status).toBe(200);
    expect(good.data.subarray(8192, 8192 + 4096).equals(data)).toBe(true);

    // Flip one payload byte of the journaled write on disk.
    const segmentDir = join(testApp.dataDir, 'journal', vpg.id);
    const segment = join(segmentDir, readdirSync(segmentDir).sort()[0]!);
    const fd = openSync(segment, 'r+');
    try {
      const content = Buffer.alloc(1 << 20);
      const length = readSync(fd, content, 0, content.length, 0);
      const at = content.subarray(0, length).indexOf(data);
      expect(at).toBeGreaterThan(0);
      writeSync(fd, Buffer.from([0x00]), 0, 1, at + 100);
    } finally {
      closeSync(fd);
    }
    const corrupt = await api.json<ErrorBody>('GET', imagePath);
    expect(corrupt.status).toBe(500);
    expect(corrupt.body.error).toBe('corrupt-record');
    expect(corrupt.body.message).toMatch(/checksum/);
  });
});
