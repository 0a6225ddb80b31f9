import { readFileSync } from 'node:fs';
import { type SecureContext, createSecureContext } from 'node:tls';

/** How a server speaks TLS: its certificate and key, and whether clients must show a certificate. */
export interface NbdTls {
  readonly secureContext: SecureContext;
  /** Clients must present a certificate the configured CA signed (authentication); else any client may connect. */
  readonly verifyClients: boolean;
}

/** PEM files: the server's certificate (chain) and key, and optionally the CA that signs client certificates. */
export interface NbdTlsFiles {
  readonly cert: string;
  readonly key: string;
  readonly ca?: string | null;
}

/**
 * Reads and checks the files once, at start: a missing file, a certificate that is not PEM or a key
 * that does not match the certificate fails here, with the file named, rather than at a client's
 * first handshake. With `ca`, only clients whose certificate it signed get past the handshake (the
 * x509 setup QEMU calls `verify-peer`); without it TLS encrypts and authenticates the server only.
 */
export function loadNbdTls(files: NbdTlsFiles): NbdTls {
  const read = (what: string, path: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new Error(`cannot read the NBD TLS ${what} ${path}: ${(err as Error).message}`, { cause: err });
    }
  };
  const cert = read('certificate', files.cert);
  const key = read('key', files.key);
  const ca = files.ca ? read('CA certificate', files.ca) : undefined;
  try {
    return { secureContext: createSecureContext({ cert, key, ...(ca ? { ca } : {}) }), verifyClients: ca !== undefined };
  } catch (err) {
    throw new Error(`the NBD TLS files are not usable (certificate ${files.cert}, key ${files.key}${files.ca ? `, CA ${files.ca}` : ''}): ${(err as Error).message}`, {
      cause: err,
    });
  }
}
