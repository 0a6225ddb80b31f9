import { type NbdErrno } from './protocol';

/**
 * What an export can do beyond reading and writing. Each one is advertised to clients as a
 * transmission flag, so a capability must only be claimed when it is really there.
 */
export interface DeviceCapabilities {
  /**
   * The device has a volatile cache: `flush()` makes completed writes durable and `write(…, fua)`
   * makes that one write durable before resolving. Advertised as NBD_FLAG_SEND_FLUSH and
   * NBD_FLAG_SEND_FUA. Without it clients send neither, and the device must make each write
   * durable (or not need durability, like a scratch overlay) on its own.
   */
  readonly flush?: boolean;
  /** `trim` is implemented (NBD_FLAG_SEND_TRIM). */
  readonly trim?: boolean;
  /** `writeZeroes` is implemented (NBD_FLAG_SEND_WRITE_ZEROES). */
  readonly writeZeroes?: boolean;
  /**
   * `writeZeroes` honours its `fast` argument (NBD_FLAG_SEND_FAST_ZERO): asked to be fast, it fails at
   * once with NBD_ENOTSUP (an NbdError) unless zeroing the range costs less than writing it would.
   * Clients such as `qemu-img convert` use the answer to decide whether to zero a whole target first.
   */
  readonly fastZero?: boolean;
  /**
   * Every connection that resolves this export reaches the same state, and a flush (or FUA) by any
   * of them makes every write completed by all of them durable before it resolves. The server
   * itself keeps no cache, so this is the only condition for NBD_FLAG_CAN_MULTI_CONN; only the
   * backend knows it. A per-connection overlay must not claim it.
   */
  readonly multiConn?: boolean;
}

/**
 * The backend of an export. The server validates every request before calling it: offsets and
 * lengths are whole multiples of `blockSize` (the length may instead end exactly at `size`), ranges
 * lie within `size`, lengths are nonzero, and nothing that writes is called on a read-only device.
 * Requests may overlap in time (a client pipelines them); the NBD client, not the server, is
 * responsible for not overlapping ranges in flight.
 *
 * A method that throws or rejects fails its request with NBD_EIO (and is logged) unless the error
 * carries an `nbdErrno` (see NbdError); host ENOSPC, EDQUOT and EFBIG become NBD_ENOSPC.
 */
export interface BlockDevice {
  /** Size of the export in bytes. A safe integer. */
  readonly size: number;
  /** Minimum and preferred block size: the alignment every request must have. */
  readonly blockSize: 512 | 4096;
  readonly readOnly: boolean;
  readonly capabilities?: DeviceCapabilities;
  /**
   * Resolves with exactly `length` bytes. The server only sends the buffer; the device must not change
   * it afterwards, since it may still be queued on the socket (return a copy of a live cache page).
   */
  read(offset: number, length: number): Promise<Buffer>;
  /**
   * Called once the server is done with a buffer `read` resolved with (its reply was written to the
   * socket, or dropped with the connection), so a device that lends out buffers of its own can reuse
   * them. At most once per buffer; not at all for a read that failed.
   */
  release?(data: Buffer): void;
  /**
   * Bytes the server reserves in front of every write's payload, in the same allocation, for the device
   * to use (`Buffer.from(data.buffer, data.byteOffset - writeHeadroom, ...)`): a device that frames
   * each write with a header of its own can then build the frame without copying the payload.
   */
  readonly writeHeadroom?: number;
  /**
   * Where the payload of a write of `length` bytes is received, when the device manages that memory
   * itself (reusing it, say, once the write has gone wherever it goes): exactly `length` bytes, with
   * the device's own headroom, if any, in front of them. The server fills the buffer and passes it to
   * `write`, or, when the request never gets that far (the connection closed mid-payload), to
   * `discardWrite`: one or the other, exactly once. Undefined: the server allocates this payload itself
   * (with `writeHeadroom` in front), as it does for a device without this method.
   */
  allocateWrite?(length: number): Buffer | undefined;
  /** A buffer from `allocateWrite` that will never be passed to `write` (see there). */
  discardWrite?(data: Buffer): void;
  /** `data` belongs to the device once called (the server never reuses it), headroom included. */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  /**
   * Makes every write that had resolved before this call durable. A device without a volatile cache
   * resolves at once.
   */
  flush(): Promise<void>;
  /** May discard the range; later reads of it may return anything until it is written again. */
  trim?(offset: number, length: number): Promise<void>;
  /**
   * The range reads back as zeroes and stays allocated (never a hole), which is what
   * NBD_CMD_FLAG_NO_HOLE asks for, so the server accepts that flag and needs no other variant.
   * `fast` is only ever true when the device claims `capabilities.fastZero` (see there).
   */
  writeZeroes?(offset: number, length: number, fua: boolean, fast: boolean): Promise<void>;
  /**
   * What the `base:allocation` metadata context reports for [offset, offset + length): consecutive
   * extents from `offset`, each with NBD_STATE_HOLE where nothing is allocated and NBD_STATE_ZERO
   * where the bytes read as zeros. A flag left clear means "allocated" or "not known", which is
   * always a safe answer. The device may answer for less of the range than asked (at least one
   * extent), and the server cuts whatever lies past it. Without this method every byte is reported
   * allocated and not known to be zero. Extent lengths should be whole blocks, save at the export's end.
   */
  blockStatus?(offset: number, length: number): Promise<readonly BlockExtent[]>;
}

/** One extent of a block status answer: `length` bytes (at least 1) and their `base:allocation` flags. */
export interface BlockExtent {
  readonly length: number;
  readonly flags: number;
}

/** A backend error that says which NBD error the client should see. */
export class NbdError extends Error {
  override readonly name = 'NbdError';

  constructor(
    readonly nbdErrno: NbdErrno,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** What `resolve` returns for an export name. */
export interface ExportEntry {
  readonly device: BlockDevice;
  /** Shown to clients by NBD_OPT_LIST and NBD_INFO_DESCRIPTION. */
  readonly description?: string;
  /**
   * Called exactly once when the server is done with this entry: right after answering an
   * NBD_OPT_INFO (or a failed NBD_OPT_GO), or, for the export a connection went into transmission
   * with, once that connection has closed and every request it had started on the device has
   * settled. A per-connection overlay can be discarded here safely.
   */
  readonly onClose?: () => void;
}

export interface ExportListing {
  readonly name: string;
  readonly description?: string;
}
