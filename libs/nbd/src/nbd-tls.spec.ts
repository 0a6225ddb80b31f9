import { chmodSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir, type TempDir } from '@cdp/testing';
import { PskKeys, loadNbdTls, parsePskFile } from './nbd-tls';

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

  describe('pre-shared keys', () => {
    const KEY_A = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff';
    const KEY_B = 'ffeeddccbbaa99887766554433221100';

    it("reads psktool's format: identity:hexkey lines, blank lines and CRLF endings allowed", () => {
      const keys = parsePskFile(`alice:${KEY_A}\r\n\n  \nbob@site-2:${KEY_B.toUpperCase()}\n`, 'keys.psk');
      expect([...keys.keys()]).toEqual(['alice', 'bob@site-2']);
      expect(keys.get('alice')?.toString('hex')).toBe(KEY_A);
      expect(keys.get('bob@site-2')?.toString('hex')).toBe(KEY_B);
    });

    it('refuses a malformed file with its line named', () => {
      const refused = (text: string): string => {
        try {
          parsePskFile(text, '/etc/cdp/keys.psk');
        } catch (err) {
          return (err as Error).message;
        }
        throw new Error(`accepted: ${JSON.stringify(text)}`);
      };
      expect(refused(`alice:${KEY_A}\nbob ${KEY_B}\n`)).toBe("the NBD TLS PSK file /etc/cdp/keys.psk, line 2: expected 'identity:hexkey'");
      expect(refused(`:${KEY_A}`)).toMatch(/line 1: the identity is empty/);
      expect(refused(`al\tice:${KEY_A}`)).toMatch(/line 1: the identity holds a control character/);
      expect(refused(`${'a'.repeat(129)}:${KEY_A}`)).toMatch(/line 1: the identity is longer than 128 bytes/);
      expect(refused('alice:0011223344556677889900112233445g')).toMatch(/line 1: the key of 'alice' is not hexadecimal bytes/);
      expect(refused('alice:00112233445566778899001122334455f')).toMatch(/not hexadecimal bytes \(two digits a byte\)/);
      expect(refused('alice:')).toMatch(/not hexadecimal bytes/);
      expect(refused('alice:00112233445566778899aabbccddee')).toMatch(/line 1: the key of 'alice' is 15 bytes; 16 to 256 are accepted/);
      expect(refused(`alice:${'00'.repeat(257)}`)).toMatch(/is 257 bytes; 16 to 256/);
      expect(refused(`alice:${KEY_A}\nalice:${KEY_B}`)).toMatch(/line 2: 'alice' has a key on an earlier line already/);
      expect(refused('\n\n')).toBe("the NBD TLS PSK file /etc/cdp/keys.psk holds no keys ('identity:hexkey' lines)");
    });

    it('names the file at start, and warns when others than its owner may read it', () => {
      const file = join(dir.path, 'keys.psk');
      expect(() => loadNbdTls({ pskFile: file })).toThrow(`cannot read the NBD TLS PSK file ${file}`);
      writeFileSync(file, 'alice\n');
      expect(() => loadNbdTls({ pskFile: file })).toThrow(`the NBD TLS PSK file ${file}, line 1`);
      writeFileSync(file, `alice:${KEY_A}\n`);
      chmodSync(file, 0o600);
      const warnings: string[] = [];
      const tls = loadNbdTls({ pskFile: file }, (m) => warnings.push(m));
      expect(warnings).toEqual([]);
      expect(tls.verifyClients).toBe(false);
      expect(tls.psk?.file).toBe(file);
      chmodSync(file, 0o644);
      loadNbdTls({ pskFile: file }, (m) => warnings.push(m));
      expect(warnings).toEqual([`the NBD TLS PSK file ${file} can be read by others than its owner (mode 644): its keys are secrets, chmod 600 it`]);
    });

    it('reads the file again when it changes: keys added, changed and revoked; a broken file refuses everyone until mended', () => {
      const file = join(dir.path, 'keys.psk');
      writeFileSync(file, `alice:${KEY_A}\n`);
      const keys = new PskKeys(file);
      expect(keys.lookup('alice')).toEqual({ key: Buffer.from(KEY_A, 'hex') });
      expect(keys.lookup('bob')).toEqual({ refused: `the PSK identity 'bob' is not in ${file}` });
      // Replaced the way editors and configuration tools do it: a new file renamed over the old one.
      writeFileSync(`${file}.new`, `bob:${KEY_B}\n`);
      renameSync(`${file}.new`, file);
      expect(keys.lookup('bob')).toEqual({ key: Buffer.from(KEY_B, 'hex') });
      expect(keys.lookup('alice')).toEqual({ refused: `the PSK identity 'alice' is not in ${file}` });
      // Rewritten in place with a mistake: nobody gets in, and each refusal says why.
      writeFileSync(file, `bob:${KEY_B}\nalice=${KEY_A}\n`);
      expect(keys.lookup('bob')).toEqual({ refused: `the NBD TLS PSK file ${file}, line 2: expected 'identity:hexkey'` });
      writeFileSync(file, `bob:${KEY_B}\nalice:${KEY_A}\n`);
      expect(keys.lookup('alice')).toEqual({ key: Buffer.from(KEY_A, 'hex') });
      rmSync(file);
      const gone = keys.lookup('alice');
      expect('refused' in gone && gone.refused).toMatch(/^the PSK file cannot be read: ENOENT/);
      writeFileSync(file, `alice:${KEY_A}\n`);
      expect(keys.lookup('alice')).toEqual({ key: Buffer.from(KEY_A, 'hex') });
    });

    it('shows an identity a client sent fit for a log line', () => {
      const file = join(dir.path, 'keys.psk');
      writeFileSync(file, `alice:${KEY_A}\n`);
      const keys = new PskKeys(file);
      expect(keys.lookup('x\u001b[31my')).toEqual({ refused: `the PSK identity 'x?[31my' is not in ${file}` });
      expect(keys.lookup('y'.repeat(300))).toEqual({ refused: `the PSK identity '${'y'.repeat(128)}…' is not in ${file}` });
    });
  });
});
