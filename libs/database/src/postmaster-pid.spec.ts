import { parsePostmasterPid } from './postmaster-pid';

describe('parsePostmasterPid', () => {
  it('reads a complete lock file', () => {
    const text = '4547\n/tmp/pgdata\n1795566386\n54329\n\n127.0.0.1\n  2146594         8\nready   \n';
    expect(parsePostmasterPid(text)).toEqual({
      pid: 4547,
      dataDir: '/tmp/pgdata',
      startedAt: 1795566386,
      port: 54329,
      socketDir: undefined,
      listenAddress: '127.0.0.1',
      status: 'ready',
    });
  });

  it('reads one the server is still writing: no port, no status yet', () => {
    expect(parsePostmasterPid('4547\n/tmp/pgdata\n')).toMatchObject({ pid: 4547, port: undefined, status: undefined });
  });

  it.each(['', '\n', 'abc\n/tmp\n', '0\n/tmp\n', '-3\n'])('rejects %j', (text) => {
    expect(parsePostmasterPid(text)).toBeUndefined();
  });
});
