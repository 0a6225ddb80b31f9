import { Controller, Get, Header } from '@nestjs/common';

/**
 * The operator's page: VPGs, journal status, the checkpoint timeline of the last hour and the newest
 * checkpoints, and a form to tag a checkpoint. It only uses the public HTTP API.
 */
@Controller()
export class WebPageController {
  @Get()
  @Header('content-type', 'text/html; charset=utf-8')
  @Header('cache-control', 'no-store')
  page(): string {
    return PAGE;
  }
}

const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Continuum: continuous data protection</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 2rem; color: #1d2733; background: #f7f9fb; }
  h1 { font-size: 1.4rem; margin: 0 0 1rem; }
  .vpg { background: #fff; border: 1px solid #d9e0e7; border-radius: 8px; padding: 1rem 1.25rem; margin-bottom: 1.5rem; }
  .vpg h2 { font-size: 1.1rem; margin: 0 0 .5rem; }
  .stats { display: flex; gap: 2rem; flex-wrap: wrap; margin: .5rem 0 1rem; }
  .stat b { display: block; font-size: 1.2rem; }
  svg { width: 100%; height: 56px; background: #f1f4f7; border-radius: 4px; }
  table { border-collapse: collapse; width: 100%; margin-top: .75rem; }
  td, th { text-align: left; padding: 3px 8px; border-bottom: 1px solid #eef1f4; font-variant-numeric: tabular-nums; }
  .tagged { color: #b35900; font-weight: 600; }
  .application-consistent { color: #0a7b3e; font-weight: 600; }
  form { display: flex; gap: .5rem; margin-top: .75rem; }
  input { padding: 4px 8px; border: 1px solid #c5ced8; border-radius: 4px; }
  button { padding: 4px 12px; border-radius: 4px; border: 1px solid #2f6fb1; background: #2f6fb1; color: #fff; cursor: pointer; }
  .error { color: #b00020; }
  .muted { color: #6b7785; }
  .history-ok { color: #0a7b3e; } .history-warning { color: #b35900; } .history-alert { color: #b00020; } .history-filling { color: #2f6fb1; }
</style>
</head>
<body>
<h1>Continuum <span class="muted">continuous data protection</span></h1>
<div id="vpgs"><p class="muted">Loading…</p></div>
<script>
const fmtTime = (iso) => new Date(iso).toLocaleTimeString();
const fmtDuration = (s) => s >= 3600 ? (s / 3600).toFixed(1) + ' h' : s >= 60 ? Math.floor(s / 60) + ' min' : s + ' s';
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

async function api(path, init) {
  const res = await fetch('/api' + path, init);
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.message || res.statusText);
  return body;
}

function timeline(slider) {
  // A recovery slider, as the article shows it: at most 180 checkpoints of the last 24 hours, evenly
  // spaced by position (denser toward now by selection, not by drawing), tagged and
  // application-consistent ones taller and coloured.
  const points = slider.checkpoints;
  if (points.length === 0) return '<p class="muted">No checkpoint recorded yet.</p>';
  const ticks = points.map((c, i) => {
    const x = points.length === 1 ? 50 : (i / (points.length - 1)) * 98 + 1;
    const color = c.kind === 'tagged' ? '#b35900' : c.kind === 'application-consistent' ? '#0a7b3e' : '#2f6fb1';
    const h = c.marked ? 44 : 24;
    return '<line x1="' + x + '%" x2="' + x + '%" y1="' + (50 - h) + '" y2="50" stroke="' + color + '" stroke-width="' + (c.marked ? 3 : 1) + '" vector-effect="non-scaling-stroke"><title>' + esc((c.name || c.kind) + ' ' + fmtTime(c.capturedAt) + ' (cut ' + c.cut + ')') + '</title></line>';
  });
  return '<svg viewBox="0 0 100 56" preserveAspectRatio="none">' + ticks.join('') + '</svg>' +
    '<div class="muted">' + points.length + ' checkpoints from ' + fmtTime(points[0].capturedAt) + ' to ' + fmtTime(points[points.length - 1].capturedAt) + ' (the slider shows at most 180 of the last 24 h; tagged ones always)</div>';
}

// What the protected site's splitter says is wrong (a full disk, a stream it cannot read back):
// each of these means writes fail for the VMs, or stop reaching the journal, or checkpoints pause.
function splitterTrouble(capture) {
  if (!capture) return '';
  let out = '';
  if (capture.tracking) out += '<p class="error">degraded mode since ' + fmtTime(capture.tracking.since) + ': the splitter log cannot take writes (' + esc(capture.tracking.reason) + '); ' + capture.tracking.writes + ' write(s) went to the volume only, their regions tracked</p>';
  if (capture.dirtyRegions) out += '<p class="error">' + capture.dirtyRegions.regions + ' dirty region(s) since ' + fmtTime(capture.dirtyRegions.since) + (capture.dirtyRegions.sync ? ', syncing: ' + capture.dirtyRegions.sync.regionsDone + ' of ' + capture.dirtyRegions.sync.regionsTotal : capture.tracking ? '' : ', waiting to be synced') + '; no checkpoint until they are' + (capture.dirtyRegions.error ? ': ' + esc(capture.dirtyRegions.error) : '') + '</p>';
  if (capture.localFlushes) out += '<p class="error">the bus has not acknowledged flushes since ' + fmtTime(capture.localFlushes.since) + ': ' + capture.localFlushes.count + ' completed durable on the protected site only; the writes wait in the splitter log</p>';
  if (capture.volumeBehind) out += '<p class="error">' + capture.volumeBehind.writes + ' logged write(s) not on their volume since ' + fmtTime(capture.volumeBehind.since) + ', retrying; new writes are refused until they are: ' + esc(capture.volumeBehind.error) + '</p>';
  if (capture.shipError) out += '<p class="error">replication cannot ship: ' + esc(capture.shipError) + '</p>';
  return out;
}

async function render() {
  const root = document.getElementById('vpgs');
  try {
    const [vpgs, writer] = await Promise.all([api('/vpgs'), api('/journal-writer/status').catch(() => null)]);
    // The recovery site's own trouble (a full journal disk): nothing reaches the journal meanwhile.
    const journalTrouble = writer && writer.failing ? '<p class="error">journaling has failed since ' + fmtTime(writer.failing.since) + ' (' + writer.failing.failures + ' attempts; retrying): ' + esc(writer.failing.error) + '</p>' : '';
    if (vpgs.length === 0) { root.innerHTML = '<p class="muted">No VPG yet. Create one with POST /api/vpgs.</p>'; return; }
    const parts = await Promise.all(vpgs.map(async (vpg) => {
      const [{ journal, history, rpo, alerts }, slider, latest, capture] = await Promise.all([api('/vpgs/' + vpg.id), api('/vpgs/' + vpg.id + '/timeline'), api('/vpgs/' + vpg.id + '/checkpoints?limit=12'), api('/splitter/vpgs/' + vpg.id).catch(() => null)]);
      const newest = latest.slice().reverse();
      const since = journal.lastCapturedAt ? ((Date.now() - Date.parse(journal.lastCapturedAt)) / 1000).toFixed(1) + ' s' : 'n/a';
      return '<div class="vpg"><h2>' + esc(vpg.name) + ' <span class="muted">' + esc(vpg.id) + '</span></h2>' +
        '<div class="muted">' + vpg.vms.map((vm) => esc(vm.name) + ': ' + vm.volumes.map((v) => esc(v.name) + ' (' + (v.sizeBytes / 1048576) + ' MiB)').join(', ')).join(' · ') + '</div>' +
        '<div class="stats"><div class="stat"><b>' + journal.appliedSeq + '</b>journaled seq</div><div class="stat"><b>' + journal.checkpointCount + '</b>checkpoints</div>' +
        '<div class="stat"><b' + (rpo.exceeded ? ' class="history-alert"' : '') + '>' + since + '</b>RPO: since newest journaled record (target ' + fmtDuration(rpo.targetSeconds) + ')</div><div class="stat"><b>' + vpg.settings.checkpointIntervalSeconds + ' s</b>checkpoint interval</div>' +
        '<div class="stat"><b class="history-' + history.status + '">' + history.status + '</b>history ' + fmtDuration(history.actualSeconds) + ' of ' + fmtDuration(history.configuredSeconds) + '</div></div>' +
        (journal.syncing ? '<p class="error">syncing: the newest journaled writes are a sync in progress; no point in time from its start on is recoverable until the first checkpoint after it</p>' : '') +
        (alerts || []).map((a) => '<p class="error">alert since ' + fmtTime(a.raisedAt) + (a.host ? ', protected site ' + esc(a.host) : '') + ': ' + esc(a.message) + '</p>').join('') +
        splitterTrouble(capture) +
        timeline(slider) +
        '<table><tr><th>time</th><th>kind</th><th>name</th><th>cut (seq)</th></tr>' + newest.map((c) => '<tr><td>' + fmtTime(c.capturedAt) + '</td><td class="' + c.kind + '">' + c.kind + '</td><td>' + esc(c.name) + '</td><td>' + c.cut + '</td></tr>').join('') + '</table>' +
        '<form data-vpg="' + vpg.id + '"><input name="name" placeholder="checkpoint name" maxlength="128" required><button>Tag checkpoint</button><span class="result"></span></form></div>';
    }));
    const focused = document.activeElement && document.activeElement.name === 'name';
    if (!focused) root.innerHTML = journalTrouble + parts.join('');
  } catch (err) {
    root.innerHTML = '<p class="error">' + esc(err.message) + '</p>';
  }
}

document.addEventListener('submit', async (e) => {
  e.preventDefault();
  const form = e.target, out = form.querySelector('.result');
  out.textContent = 'tagging…';
  try {
    const r = await api('/vpgs/' + form.dataset.vpg + '/checkpoints', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: form.name.value }) });
    out.textContent = r.status === 'recorded' ? 'recorded at seq ' + r.checkpoint.cut : 'requested';
    form.name.value = '';
    render();
  } catch (err) { out.textContent = err.message; out.className = 'result error'; }
});

render();
setInterval(render, 2000);
</script>
</body>
</html>
`;
