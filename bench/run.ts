import { chmodSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type BenchSuite, type Figure, ROOT, hasTool, machine } from './suite';

/**
 * `npm run bench [-- --quick] [-- --only <suite>[,<suite>]]`: runs every `bench/*.bench.ts` suite (or
 * the named ones), each figure the median of runs measured beside its baseline in the same run, and
 * writes BENCHMARKS.md and BENCHMARKS.json. `--quick` (CI) only checks the suites run: short runs, one
 * repetition, nothing written. With `--only`, the other suites' figures in BENCHMARKS.json are kept,
 * each with the date and machine it was measured on.
 */
interface SuiteReport {
  readonly measuredAt: string;
  readonly machine: string;
  readonly repeats: number;
  readonly figures: readonly Figure[];
}

interface Report {
  readonly suites: Record<string, SuiteReport>;
}

function parseArgs(argv: readonly string[]): { quick: boolean; only: string[] | null } {
  const quick = argv.includes('--quick');
  const at = argv.indexOf('--only');
  if (at >= 0 && !argv[at + 1]) {
    throw new Error('--only needs a comma-separated list of suite names');
  }
  const only = at >= 0 ? (argv[at + 1] as string).split(',').filter(Boolean) : null;
  return { quick, only };
}

async function loadSuites(): Promise<BenchSuite[]> {
  const files = readdirSync(__dirname)
    .filter((f) => f.endsWith('.bench.ts'))
    .sort();
  // The block path goes first: it is the headline, and it needs the machine quieter than anything else.
  const suites = await Promise.all(files.map(async (f) => ((await import(join(__dirname, f))) as { suite: BenchSuite }).suite));
  return suites.sort((a, b) => (a.name === 'block' ? -1 : b.name === 'block' ? 1 : 0));
}

async function main(): Promise<void> {
  const { quick, only } = parseArgs(process.argv.slice(2));
  const all = await loadSuites();
  const unknown = (only ?? []).filter((name) => !all.some((s) => s.name === name));
  if (unknown.length) {
    throw new Error(`unknown suite(s): ${unknown.join(', ')}; there are: ${all.map((s) => s.name).join(', ')}`);
  }
  const chosen = only ? all.filter((s) => only.includes(s.name)) : all;
  const missing = [...new Set(chosen.flatMap((s) => s.tools))].filter((tool) => !hasTool(tool));
  if (missing.length) {
    const message = `missing tools: ${missing.join(', ')} (Debian: apt-get install fio nbdkit qemu-utils libnbd-bin kcat)`;
    // The quick run is the last step of `npm test`: like a test, it skips for a missing tool, saying
    // so, except under CI, where a skip would hide that the suites no longer run.
    if (quick && process.env['CI'] !== 'true') {
      process.stdout.write(`quick run skipped: ${message}\n`);
      return;
    }
    throw new Error(message);
  }
  const repeats = quick ? 1 : 3;
  const scratch = statfsSync(tmpdir());
  process.stdout.write(`scratch space under ${tmpdir()}: ${((scratch.bavail * scratch.bsize) / 1e9).toFixed(0)} GB free (the full block suite needs about 60 GB; TMPDIR moves it)\n`);
  const reports: Record<string, SuiteReport> = {};
  for (const suite of chosen) {
    const work = mkdtempSync(join(tmpdir(), `cdp-bench-${suite.name}-`));
    // The embedded PostgreSQL server runs as its own user when we are root: it must be able to get through.
    chmodSync(work, 0o755);
    process.stdout.write(`== ${suite.name}\n`);
    try {
      const figures = await suite.run({ quick, repeats, work, log: (line) => process.stdout.write(`${line}\n`) });
      reports[suite.name] = { measuredAt: new Date().toISOString(), machine: machine(), repeats, figures };
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  }
  if (quick) {
    process.stdout.write('quick run: the suites work; figures not written\n');
    return;
  }
  const previous = readPrevious();
  const merged: Report = { suites: { ...previous.suites, ...reports } };
  writeReport(merged, all.map((s) => s.name));
  process.stdout.write('wrote BENCHMARKS.md and BENCHMARKS.json\n');
}

function readPrevious(): Report {
  const file = join(ROOT, 'BENCHMARKS.json');
  if (!existsSync(file)) {
    return { suites: {} };
  }
  const parsed = JSON.parse(readFileSync(file, 'utf8')) as Partial<Report>;
  // Files from before suites existed hold one flat list; they are replaced, not merged.
  return { suites: parsed.suites ?? {} };
}

function verdict(f: Figure): string {
  if (f.met === null) {
    return '';
  }
  if (f.met) {
    return 'met';
  }
  const target = Number(f.goal.replace(/[^0-9.]/g, ''));
  if (f.ratio !== null && /ratio/.test(f.goal)) {
    return `**missed** (${((1 - f.ratio / target) * 100).toFixed(0)}% short)`;
  }
  // A miss by less than the table's rounding shows the digit that makes it one.
  const shown = f.value.toFixed(1) === target.toFixed(1) ? f.value.toFixed(2) : f.value.toFixed(1);
  return `**missed** (${shown} ${f.unit} against ${f.goal})`;
}

function writeReport(report: Report, order: readonly string[]): void {
  const names = Object.keys(report.suites).sort((a, b) => order.indexOf(a) - order.indexOf(b));
  const sections = names.flatMap((name) => {
    const s = report.suites[name] as SuiteReport;
    const digits = (f: Figure): number => (f.unit === 'ms' || f.value < 100 ? 1 : 0);
    const rows = s.figures.map((f) => {
      const ratio = f.ratio === null ? '' : f.ratio.toFixed(2);
      const baseline = f.baselineValue === null ? f.baseline : `${f.baseline}: ${f.baselineValue.toFixed(digits(f))}`;
      return `| ${f.name} | ${f.value.toFixed(digits(f))} ${f.unit} | ${baseline} | ${ratio} | ${f.goal} | ${verdict(f)} |`;
    });
    const commands = s.figures.map(
      (f) => `- ${f.name}: \`${f.command}\` (runs: ${f.runs.map((r) => r.toFixed(1)).join(', ')}; baseline runs: ${f.baselineRuns.map((r) => r.toFixed(1)).join(', ')})`,
    );
    return [
      `## ${name}`,
      '',
      `Measured ${s.measuredAt} on ${s.machine}; medians of ${s.repeats} runs.`,
      '',
      '| figure | value | baseline (same run) | ratio | goal | |',
      '| --- | --- | --- | --- | --- | --- |',
      ...rows,
      '',
      'Commands and runs:',
      '',
      ...commands,
      '',
    ];
  });
  writeFileSync(
    join(ROOT, 'BENCHMARKS.md'),
    [
      '# Benchmarks',
      '',
      'Written by `npm run bench` (bench/run.ts; one section per `bench/*.bench.ts` suite). Each figure is the median of its runs, measured beside its baseline in the same run; these machines are shared and noisy, so compare ratios, not absolute numbers. Where a goal is missed the table says by how much.',
      '',
      ...sections,
    ].join('\n'),
  );
  writeFileSync(join(ROOT, 'BENCHMARKS.json'), `${JSON.stringify(report, null, 2)}\n`);
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? (err.stack ?? err.message) : err);
  process.exit(1);
});
