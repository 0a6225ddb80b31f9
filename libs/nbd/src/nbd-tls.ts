import { readFileSync, statSync } from 'node:fs';
import { type SecureContext, createSecureContext } from 'node:tls';

/** How a server speaks TLS: its credentials, and how clients are authenticated. */
export interface NbdTls {
  readonly secureContext: SecureContext;
  /** Clients must present a certificate the configured CA signed (authentication); else any client may connect. */
  readonly verifyClients: boolean;
  /** With pre-shared keys instead of certificates: a client is authenticated by holding its identity's key. */
  readonly psk?: PskKeys;
}

/** x509: PEM files, the server's certificate (chain) and key, and optionally the CA that signs client certificates. */
export interface NbdTlsFiles {
  readonly cert: string;
  readonly key: string;
  readonly ca?: string | null;
}

/** Pre-shared keys: a file of `identity:hexkey` lines. */
export interface NbdTlsPskFile {
  readonly pskFile: string;
}

export type NbdTlsSettings = NbdTlsFiles | NbdTlsPskFile;

/**
 * Reads and checks the files once, at start: a missing file, a certificate that is not PEM, a key
 * that does not match the certificate or a malformed PSK file fails here, with the file named (and
 * the line, for a PSK file), rather than at a client's first handshake.
 *
 * x509: with `ca`, only clients whose certificate it signed get past the handshake (the setup QEMU
 * calls `verify-peer`); without it TLS encrypts and authenticates the server only.
 *
 * PSK: both sides prove they hold the same key (TLS 1.3 with an ephemeral key exchange, so a key
 * that leaks later does not decrypt recorded sessions); no certificates. `warn` hears of a key file
 * that others than its owner may read.
 */
export function loadNbdTls(settings: NbdTlsSettings, warn: (message: string) => void = () => undefined): NbdTls {
  if ('pskFile' in settings) {
    const psk = new PskKeys(settings.pskFile);
    const mode = statSync(settings.pskFile).mode;
    if ((mode & 0o077) !== 0) {
      warn(`the NBD TLS PSK file ${settings.pskFile} can be read by others than its owner (mode ${(mode & 0o777).toString(8)}): its keys are secrets, chmod 600 it`);
    }
    return { secureContext: createSecureContext({ minVersion: 'TLSv1.3' }), verifyClients: false, psk };
  }
  const read = (what: string, path: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new Error(`cannot read the NBD TLS ${what} ${path}: ${(err as Error).message}`, { cause: err });
    }
  };
  const cert = read('certificate', settings.cert);
  const key = read('key', settings.key);
  const ca = settings.ca ? read('CA certificate', settings.ca) : undefined;
  try {
    return { secureContext: createSecureContext({ cert, key, ...(ca ? { ca } : {}) }), verifyClients: ca !== undefined };
  } catch (err) {
    throw new Error(
      `the NBD TLS files are not usable (certificate ${settings.cert}, key ${settings.key}${settings.ca ? `, CA ${settings.ca}` : ''}): ${(err as Error).message}`,
      { cause: err },
    );
  }
}

/** Shorter keys are refused: 128 bits is the least a key that authenticates a block device should have. */
export const PSK_MIN_KEY_BYTES = 16;
/** OpenSSL's limits (PSK_MAX_PSK_LEN and PSK_MAX_IDENTITY_LEN in 1.1.1; 3.x allows more). */
export const PSK_MAX_KEY_BYTES = 256;
export const PSK_MAX_IDENTITY_BYTES = 128;

/** The key of an identity, or why a client that offered it gets none. */
export type PskLookup = { readonly key: Buffer } | { readonly refused: string };

/**
 * A PSK file in the format of GnuTLS's `psktool`, which libnbd (`tls-psk-file`), QEMU
 * (`tls-creds-psk`, the `keys.psk` of its directory) and nbdkit (`--tls-psk`) read too: one
 * `identity:hexkey` line per client, blank lines ignored.
 *
 * Read again at a handshake when it has changed since the last read (its inode, size or modification
 * time), as GnuTLS reads it at every handshake: keys are added, changed and revoked without a restart.
 * A file that can no longer be read or parsed refuses every client until it is mended (each refusal
 * says why), rather than keeping keys the operator may have meant to revoke.
 */
export class PskKeys {
  private keys: ReadonlyMap<string, Buffer>;
  private stamp: string;
  private problem: string | null = null;

  constructor(readonly file: string) {
    // Stamped before it is read: a change in between makes the first handshake read it again.
    try {
      this.stamp = stampOf(file);
    } catch (err) {
      throw new Error(`cannot read the NBD TLS PSK file ${file}: ${(err as Error).message}`, { cause: err });
    }
    this.keys = parsePskFile(readPskFile(file), file);
  }

  lookup(identity: string): PskLookup {
    this.refresh();
    if (this.problem !== null) {
      return { refused: this.problem };
    }
    const key = this.keys.get(identity);
    return key ? { key } : { refused: `the PSK identity '${printable(identity)}' is not in ${this.file}` };
  }

  private refresh(): void {
    let stamp: string;
    try {
      stamp = stampOf(this.file);
    } catch (err) {
      this.stamp = '';
      this.problem = `the PSK file cannot be read: ${(err as Error).message}`;
      return;
    }
    if (stamp === this.stamp) {
      return;
    }
    try {
      this.keys = parsePskFile(readPskFile(this.file), this.file);
      this.problem = null;
      this.stamp = stamp;
    } catch (err) {
      // Not remembered as read: once mended, the next handshake reads it again.
      this.stamp = '';
      this.problem = (err as Error).message;
    }
  }
}

function stampOf(file: string): string {
  const s = statSync(file, { bigint: true });
  return `${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
}

function readPskFile(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read the NBD TLS PSK file ${file}: ${(err as Error).message}`, { cause: err });
  }
}

/** `identity:hexkey` lines; anything else is refused with its line named. */
export function parsePskFile(text: string, file: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] as string).replace(/\r$/, '');
    if (line.trim() === '') {
      continue;
    }
    const bad = (why: string): Error => new Error(`the NBD TLS PSK file ${file}, line ${i + 1}: ${why}`);
    const colon = line.indexOf(':');
    if (colon < 0) {
      throw bad("expected 'identity:hexkey'");
    }
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (identity.length === 0) {
      throw bad('the identity is empty');
    }
    // eslint-disable-next-line no-control-regex -- control characters are what is being refused
    if (/[\u0000-\u001f\u007f]/.test(identity)) {
      throw bad('the identity holds a control character');
    }
    if (Buffer.byteLength(identity) > PSK_MAX_IDENTITY_BYTES) {
      throw bad(`the identity is longer than ${PSK_MAX_IDENTITY_BYTES} bytes`);
    }
    if (!/^(?:[0-9a-fA-F]{2})+$/.test(hex)) {
      throw bad(`the key of '${identity}' is not hexadecimal bytes (two digits a byte)`);
    }
    const key = Buffer.from(hex, 'hex');
    if (key.length < PSK_MIN_KEY_BYTES || key.length > PSK_MAX_KEY_BYTES) {
      throw bad(`the key of '${identity}' is ${key.length} bytes; ${PSK_MIN_KEY_BYTES} to ${PSK_MAX_KEY_BYTES} are accepted (psktool makes 32)`);
    }
    if (keys.has(identity)) {
      throw bad(`'${identity}' has a key on an earlier line already`);
    }
    keys.set(identity, key);
  }
  if (keys.size === 0) {
    throw new Error(`the NBD TLS PSK file ${file} holds no keys ('identity:hexkey' lines)`);
  }
  return keys;
}

/** An identity a client sent, fit for a log line. */
function printable(identity: string): string {
  // eslint-disable-next-line no-control-regex -- control characters are what is being replaced
  return identity.length > PSK_MAX_IDENTITY_BYTES ? `${identity.slice(0, PSK_MAX_IDENTITY_BYTES)}…` : identity.replace(/[\u0000-\u001f\u007f]/g, '?');
}
