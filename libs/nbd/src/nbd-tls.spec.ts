import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir, type TempDir } from '@cdp/testing';
import { loadNbdTls } from './nbd-tls';

describe('loadNbdTls', () => {
  let dir: TempDir;

  beforeEach(async () => {
    dir = await tempDir('nbd-tls-');
  });

  afterEach(() => dir.cleanup());

  it('names the file it cannot read', () => {
    const cert = join(dir.path, 'missing-cert.pem');
    expect(() => loadNbdTls({ cert, key: join(dir.path, 'key.pem') })).toThrow(`cannot read the NBD TLS certificate ${cert}`);
    writeFileSync(cert, 'x');
    const key = join(dir.path, 'missing-key.pem');
    expect(() => loadNbdTls({ cert, key })).toThrow(`cannot read the NBD TLS key ${key}`);
    writeFileSync(key, 'x');
    const ca = join(dir.path, 'missing-ca.pem');
    expect(() => loadNbdTls({ cert, key, ca })).toThrow(`cannot read the NBD TLS CA certificate ${ca}`);
  });

  it('refuses files that are not a certificate and its key, naming them', () => {
    const cert = join(dir.path, 'cert.pem');
    const key = join(dir.path, 'key.pem');
    writeFileSync(cert, '-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n');
    writeFileSync(key, 'not a key');
    expect(() => loadNbdTls({ cert, key })).toThrow(new RegExp(`the NBD TLS files are not usable \\(certificate ${cert}, key ${key}\\)`));
  });
});
