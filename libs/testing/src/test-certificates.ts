import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runToolOk } from './external-tools';

/** Where `makeTestCertificates` put its files. */
export interface TestCertificates {
  /** The server's certificate (for 127.0.0.1 and localhost) and key, and the CA that signed every certificate here. */
  readonly serverCert: string;
  readonly serverKey: string;
  readonly caCert: string;
  /** A directory as QEMU's and libnbd's x509 credentials want it: `ca-cert.pem` only (the client checks the server). */
  readonly clientDirNoCert: string;
  /** The same with `client-cert.pem` and `client-key.pem`, signed by the CA (the server may check the client). */
  readonly clientDir: string;
  /** A client certificate and key signed by another CA, in QEMU's layout, with the right `ca-cert.pem`. */
  readonly strangerDir: string;
  /** A client directory whose `ca-cert.pem` is the other CA's: it cannot verify the server. */
  readonly wrongCaDir: string;
}

/**
 * A throwaway CA, a server certificate for 127.0.0.1 and two client certificates (one of another CA),
 * made with the `openssl` command (EC keys, valid for two days). For tests of TLS with real clients.
 */
export async function makeTestCertificates(dir: string): Promise<TestCertificates> {
  await mkdir(dir, { recursive: true });
  const at = (name: string): string => join(dir, name);
  const days = ['-days', '2'];
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const ca = async (name: string): Promise<void> => {
    await runToolOk('openssl', ['req', '-x509', ...ec, '-keyout', at(`${name}-key.pem`), '-out', at(`${name}-cert.pem`), ...days, '-subj', `/CN=${name}`]);
  };
  const signed = async (name: string, signer: string, extensions: string): Promise<void> => {
    await writeFile(at(`${name}.ext`), extensions);
    await runToolOk('openssl', ['req', ...ec, '-keyout', at(`${name}-key.pem`), '-out', at(`${name}.csr`), '-subj', `/CN=${name}`]);
    await runToolOk('openssl', [
      'x509', '-req', '-in', at(`${name}.csr`), '-CA', at(`${signer}-cert.pem`), '-CAkey', at(`${signer}-key.pem`), '-CAcreateserial',
      '-out', at(`${name}-cert.pem`), ...days, '-extfile', at(`${name}.ext`),
    ]);
  };
  await ca('ca');
  await ca('other-ca');
  await signed('server', 'ca', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n');
  await signed('client', 'ca', 'keyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n');
  await signed('stranger', 'other-ca', 'keyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n');
  const layout = async (name: string, client?: string, trusted = 'ca'): Promise<string> => {
    const out = at(name);
    await mkdir(out, { recursive: true });
    await copyFile(at(`${trusted}-cert.pem`), join(out, 'ca-cert.pem'));
    if (client) {
      await copyFile(at(`${client}-cert.pem`), join(out, 'client-cert.pem'));
      await copyFile(at(`${client}-key.pem`), join(out, 'client-key.pem'));
    }
    return out;
  };
  return {
    serverCert: at('server-cert.pem'),
    serverKey: at('server-key.pem'),
    caCert: at('ca-cert.pem'),
    clientDirNoCert: await layout('client-no-cert'),
    clientDir: await layout('client-with-cert', 'client'),
    strangerDir: await layout('client-stranger', 'stranger'),
    wrongCaDir: await layout('client-wrong-ca', undefined, 'other-ca'),
  };
}
