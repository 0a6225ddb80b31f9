import { findTool, runTool, runToolOk } from './external-tools';

describe('external tool helpers', () => {
  it('finds programs on PATH and not others', () => {
    expect(findTool('sh')).toMatch(/\/sh$/);
    expect(findTool('no-such-program-cdp-nbd')).toBeUndefined();
  });

  it('returns output and exit codes, and kills a program that overruns its deadline', async () => {
    expect(await runTool('sh', ['-c', 'echo out; echo err >&2; exit 3'])).toMatchObject({ code: 3, stdout: 'out\n', stderr: 'err\n' });
    await expect(runToolOk('sh', ['-c', 'exit 1'])).rejects.toThrow(/exited 1/);
    const started = Date.now();
    await expect(runTool('sleep', ['10'], 100)).rejects.toThrow(/timed out after 100 ms/);
    expect(Date.now() - started).toBeLessThan(5000);
  });
});
