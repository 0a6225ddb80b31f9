/** Where an NBD server listens: TCP, or a Unix domain socket on this host. */
export type NbdEndpoint = { readonly host: string; readonly port: number } | { readonly socket: string };

/**
 * The URI a client opens to reach `exportName` at `endpoint`, in the NBD URI format libnbd, QEMU and
 * nbdkit read (nbd-uri.md of the NBD project): `nbd://host:port/export` over TCP,
 * `nbd+unix:///export?socket=/path` over a Unix socket, and `nbds`/`nbds+unix` when TLS is required.
 * Export names go in as they are ('/' separates the parts of ours); an IPv6 host gets its brackets.
 */
export function nbdUri(endpoint: NbdEndpoint, tls: boolean, exportName: string): string {
  if ('socket' in endpoint) {
    // The path is one query value: escape what would end it or be read as an escape, keep '/' readable.
    const socket = encodeURIComponent(endpoint.socket).replace(/%2F/g, '/');
    return `${tls ? 'nbds+unix' : 'nbd+unix'}:///${exportName}?socket=${socket}`;
  }
  const host = endpoint.host.includes(':') ? `[${endpoint.host}]` : endpoint.host;
  return `${tls ? 'nbds' : 'nbd'}://${host}:${endpoint.port}/${exportName}`;
}
