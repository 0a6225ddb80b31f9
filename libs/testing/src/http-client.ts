/** A thin JSON/binary HTTP client for tests that drive the system through its public API. */
export class ApiClient {
  constructor(readonly baseUrl: string) {}

  async json<T>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
    const response = await fetch(`${this.baseUrl}/api${path}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await response.text();
    return { status: response.status, body: (text ? JSON.parse(text) : undefined) as T };
  }

  async ok<T>(method: string, path: string, body?: unknown): Promise<T> {
    const { status, body: result } = await this.json<T>(method, path, body);
    if (status >= 300) {
      throw new Error(`${method} ${path} answered ${status}: ${JSON.stringify(result)}`);
    }
    return result;
  }

  /** A write the splitter must log: its seq (an error if it was taken in degraded mode instead). */
  async write(vpgId: string, volumeId: string, offset: number, data: Buffer, fua = false): Promise<number> {
    const seq = await this.writeOrTrack(vpgId, volumeId, offset, data, fua);
    if (seq === null) {
      throw new Error(`write at ${offset} was taken in degraded mode (no seq): the splitter log could not take it`);
    }
    return seq;
  }

  /** A write through the splitter's HTTP API: its seq, or null when it was taken in degraded mode (tracked, not logged). */
  async writeOrTrack(vpgId: string, volumeId: string, offset: number, data: Buffer, fua = false): Promise<number | null> {
    const response = await fetch(`${this.baseUrl}/api/splitter/vpgs/${vpgId}/volumes/${volumeId}/data?offset=${offset}${fua ? '&fua=1' : ''}`, {
      method: 'PUT',
      headers: { 'content-type': 'application/octet-stream' },
      body: data,
    });
    const body = (await response.json()) as { seq?: number | null; message?: string };
    if (response.status !== 200 || !(typeof body.seq === 'number' || body.seq === null)) {
      throw new Error(`write answered ${response.status}: ${body.message ?? JSON.stringify(body)}`);
    }
    return body.seq;
  }

  async bytes(path: string): Promise<{ status: number; data: Buffer }> {
    const response = await fetch(`${this.baseUrl}/api${path}`);
    return { status: response.status, data: Buffer.from(await response.arrayBuffer()) };
  }
}
