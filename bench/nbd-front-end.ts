/**
 * The block suite's reference for the NBD front end alone: our NbdServer serving a plain file, with
 * none of the capture behind it (no seq, no log, no shipping, no journal). Beside nbdkit's file
 * plugin it shows what the protocol handling costs in this runtime, so that the gap between the
 * splitter and nbdkit can be read as the cost of capture, replication and journaling.
 *
 * Its own process, forked by the suite (which runs fio with spawnSync, blocking its own event loop):
 * serves the file given as its argument on a loopback port it sends the suite over IPC, until SIGTERM
 * or until the suite goes away.
 */
import { closeSync, fdatasync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { type BlockDevice, NbdServer } from '@cdp/nbd';

const file = process.argv[2];
if (!file) {
  throw new Error('usage: nbd-front-end.ts <file>');
}
const fd = openSync(file, 'r+');
const size = fstatSync(fd).size;

// Positioned writes on the event loop, as the splitter writes a small batch to its volume.
const device: BlockDevice = {
  size,
  blockSize: 4096,
  readOnly: false,
  capabilities: { flush: true, multiConn: true },
  read(offset, length) {
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      done += readSync(fd, buf, done, length - done, offset + done);
    }
    return Promise.resolve(buf);
  },
  write(offset, data) {
    let done = 0;
    while (done < data.length) {
      done += writeSync(fd, data, done, data.length - done, offset + done);
    }
    return Promise.resolve();
  },
  flush() {
    return new Promise((resolve, reject) => fdatasync(fd, (err) => (err ? reject(err) : resolve())));
  },
};

const server = new NbdServer({ resolve: () => ({ device }) });
const stop = (): void => {
  void server.close().finally(() => {
    closeSync(fd);
    process.exit(0);
  });
};
process.once('SIGTERM', stop);
// An IPC channel from fork(): when the suite exits, for whatever reason, so does this server.
process.once('disconnect', stop);
void server.listen(0).then(({ port }) => process.send?.({ port }));
