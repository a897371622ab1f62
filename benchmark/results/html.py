"""A static, self-contained leaderboard page: sortable, filterable, with metric-versus-cost plots.

Everything shown comes from the rows embedded as JSON (strings HTML-escaped here, numbers finite
or null, so ``JSON.parse`` always succeeds); the page loads no external resource.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from benchmark.eval.metrics import higher_is_better
from benchmark.results.tables import (
    BEYOND,
    HEADLINE,
    SIGNIFICANCE_METRIC,
    SLICES,
    kind_of,
    table_title,
    tables,
)
from benchmark.untrusted import RECORD

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>llm4rec-bench leaderboard</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;background:#fafbfc;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:1.2em 1.5em 3em}
h1{font-size:1.7em;margin:.2em 0 .1em}
h2{font-size:1.15em;margin:2.2em 0 .2em}
.meta{color:#555;font-size:.92em;margin:0 0 1em}
.meta code{background:#eef0f3;padding:0 .3em;border-radius:3px}
.intro{max-width:62em;font-size:.95em}
.setting{color:#8a4b00;font-size:.9em;margin:.1em 0 .5em}
.toc{font-size:.92em;columns:2;max-width:62em;padding-left:1.2em}
.controls{position:sticky;top:0;z-index:3;background:#fafbfc;padding:.5em 0;border-bottom:1px solid #e3e6ea}
.controls label{margin-right:1.2em;font-size:.95em}
.scroll{overflow-x:auto;max-width:100%;border:1px solid #e3e6ea;border-radius:4px;background:#fff}
table{border-collapse:separate;border-spacing:0;font-size:.88em}
th,td{padding:.3em .65em;border-bottom:1px solid #eceef1;text-align:right;white-space:nowrap}
th{cursor:pointer;background:#f3f5f7;user-select:none;font-weight:600;position:sticky;top:0}
th.nosort{cursor:default}
td.name,th.name{text-align:left;position:sticky;left:0;z-index:1;background:#fff;border-right:1px solid #e3e6ea;max-width:26em;overflow:hidden;text-overflow:ellipsis}
th.name{background:#f3f5f7;z-index:2}
td.text{text-align:left;color:#555}
td.best{font-weight:700;background:#e8f5e9}
tr.best-row td.name{background:#fff}
th.sorted-asc::after{content:" \\25B2";font-size:.7em}
th.sorted-desc::after{content:" \\25BC";font-size:.7em}
.sig-up{color:#0a7a0a;font-weight:700}.sig-down{color:#b00020;font-weight:700}
td.records a{margin-left:.35em}
figure{margin:1em 0 0}
figcaption{font-size:.85em;color:#555;max-width:62em}
svg.plot,svg.tradeoff{background:#fff;border:1px solid #e3e6ea;border-radius:4px;max-width:100%;height:auto}
svg.plot text,svg.tradeoff text{font-family:system-ui,sans-serif;fill:#1d2330}
svg.plot .grid,svg.tradeoff .grid{stroke:#eceef1}
svg.plot .axis,svg.tradeoff .axis{stroke:#8a93a0}
ol.unlabelled{font-size:.85em;columns:3;color:#333}
footer{margin-top:3em;font-size:.85em;color:#666}
</style></head><body><main>
<h1>llm4rec-bench leaderboard</h1>
<p class="meta" id="meta"></p>
<p class="intro">One table per test set: runs are compared only with runs scored on the same test rows
(same dataset and preprocessing, split and evaluation protocol with the same options). A title says
how its setting differs from the project's default configuration. Cells are the mean ± sample
standard deviation over seeds; the best mean of each column is highlighted; an empty cell is a
metric the run did not measure. ▲/▼: significantly better/worse than the best baseline of the
table (paired Wilcoxon test over per-user values of the headline metric, Holm-corrected,
p &lt; 0.05; for labeled tables per-user AUC, which GAUC summarises, not the pooled AUC).
The plots draw the headline metric against the cost of one run: training plus evaluation seconds
(a run that reused trained weights counts the training behind them), on the hardware named in the
device column. Ranking tables also show beyond-accuracy metrics of the top 10, computed from the
predictions and the train part only: intra-list diversity (ild: 1 - mean cosine of MiniLM title
embeddings; ildgenre: of genre vectors), novelty (mean self-information in bits), average
recommendation popularity (arp), long-tail share (items outside the head that covers 20 % of train
interactions), Gini of exposure over the catalogue (lower: more even) and miscalibration (calib: KL
divergence from the user's genre history, lower is better); a second plot draws the headline metric
against the one chosen below. Click a column header to sort; each row links to its
run records.</p>
<div class="controls">
<label>Slice <select id="slice"></select></label>
<label>Family <select id="family"></select></label>
<label>Backbone <select id="backbone"></select></label>
<label>Prompt <select id="prompt"></select></label>
<label>In-context <select id="icl"></select></label>
<label>History <select id="history"></select></label>
<label>Trade-off axis <select id="beyond"></select></label>
</div>
<ol class="toc" id="toc"></ol>
<div id="tables"></div>
<footer id="footer"></footer>
<script id="data" type="application/json">__DATA__</script>
<script>
const DATA = JSON.parse(document.getElementById('data').textContent);
const $ = (id) => document.getElementById(id);
const META = DATA.meta;
$('meta').innerHTML = `Generated ${META.generated} from commit <code>${META.commit ? META.commit.slice(0, 12) : 'unknown'}</code>` +
  (META.dirty ? ' (with uncommitted changes)' : '') +
  ` · ${META.records} run records in <code>${META.source}</code>` +
  (META.skipped ? ` (${META.skipped} skipped: unreadable or copies of another run)` : '') +
  ` · ${DATA.tables.length} tables`;
$('footer').innerHTML = `Generated by <code>llm4rec leaderboard --runs ${META.source}</code>` +
  (META.commit ? ` at commit <code>${META.commit}</code>` : '') + `, ${META.generated}.`;
function options(sel, values) {
  sel.innerHTML = values.map(v => `<option value="${v}">${v}</option>`).join('');
}
options($('slice'), ['overall'].concat(DATA.slices));
options($('family'), ['all'].concat([...new Set(DATA.rows.map(r => r.family))].sort()));
options($('backbone'), ['all'].concat([...new Set(DATA.rows.map(r => r.backbone || '-'))].sort()));
options($('prompt'), ['all'].concat([...new Set(DATA.rows.map(r => r.prompt || '-'))].sort()));
options($('icl'), ['all'].concat([...new Set(DATA.rows.map(r => r.icl || '-'))].sort()));
options($('history'), ['all'].concat([...new Set(DATA.rows.map(r => r.history || '-'))].sort()));
options($('beyond'), DATA.beyond.filter(m => DATA.rows.some(r => r.metrics['test/' + m]))
  .concat(DATA.rows.some(r => r.prompt_tokens != null) ? ['prompt tokens'] : []));
$('toc').innerHTML = DATA.tables.map((t, i) => `<li><a href="#table-${i}">${t.title}</a></li>`).join('');
const sortState = {};
function fmt(s) { return s == null ? '' : (s[1] == null ? s[0].toFixed(4) : s[0].toFixed(4) + ' ± ' + s[1].toFixed(4)); }
function secs(x) { return x == null ? '' : x.toFixed(1); }
function cols(t, slice, rows) {
  const pre = 'test/' + (slice === 'overall' ? '' : slice + '/');
  const beyond = t.kind === 'ranking' ? DATA.beyond.filter(m => rows.some(r => r.metrics[pre + m])) : [];
  return DATA.headline[t.kind].concat(beyond)
             .filter(m => !(slice !== 'overall' && (m.startsWith('coverage') || m.startsWith('gini'))))
             .map(m => pre + m);
}
function lowerIsBetter(c) { return DATA.lower.includes(c.split('/').pop().split('@')[0]); }
function sortValue(r, col) {
  if (col === 'model') return r.model;
  if (col === 'cost') return r.cost_seconds;
  return r.metrics[col] ? r.metrics[col][0] : null;
}
function render() {
  const slice = $('slice').value, fam = $('family').value, bb = $('backbone').value, pr = $('prompt').value;
  const icl = $('icl').value, hist = $('history').value;
  const out = [];
  DATA.tables.forEach((t, ti) => {
    let rows = DATA.rows.filter(r => r.table === ti)
      .filter(r => fam === 'all' || r.family === fam)
      .filter(r => bb === 'all' || (r.backbone || '-') === bb)
      .filter(r => pr === 'all' || (r.prompt || '-') === pr)
      .filter(r => icl === 'all' || (r.icl || '-') === icl)
      .filter(r => hist === 'all' || (r.history || '-') === hist);
    const cs = cols(t, slice, DATA.rows.filter(r => r.table === ti));
    const st = sortState[ti];
    if (st) rows.sort((a, b) => {
      const va = sortValue(a, st.col), vb = sortValue(b, st.col);
      if (va == null || vb == null) return (va == null) - (vb == null);  // missing values last
      return (va < vb ? -1 : va > vb ? 1 : 0) * st.dir;
    });
    const best = {};
    cs.forEach(c => {
      const v = rows.filter(r => r.metrics[c]).map(r => r.metrics[c][0]);
      if (v.length) best[c] = lowerIsBetter(c) ? Math.min(...v) : Math.max(...v);
    });
    const arrow = c => st && st.col === c ? (st.dir > 0 ? ' class="sorted-asc"' : ' class="sorted-desc"') : '';
    let h = `<section id="table-${ti}"><h2>${t.title}</h2>` +
      (t.setting.length ? `<p class="setting">Differs from the default configuration: ${t.setting.join(', ')}</p>` : '');
    if (!rows.length) { out.push(h + '<p>No row matches the filters.</p></section>'); return; }
    h += `<div class="scroll"><table data-table="${ti}"><thead><tr>` +
      `<th class="name${st && st.col === 'model' ? (st.dir > 0 ? ' sorted-asc' : ' sorted-desc') : ''}" data-col="model">model</th>` +
      '<th class="nosort">family</th><th class="nosort">backbone</th><th class="nosort">seeds</th>' +
      cs.map(c => `<th data-col="${c}"${arrow(c)}>${c.replace('test/', '')}</th>`).join('') +
      `<th class="nosort">sig.</th><th class="nosort">train s</th><th class="nosort">eval s</th><th data-col="cost"${arrow('cost')}>cost s</th>` +
      '<th class="nosort">device</th><th class="nosort">records</th></tr></thead><tbody>';
    rows.forEach(r => {
      h += `<tr data-model="${r.model}"><td class="name" title="${r.model}">${r.model}</td><td class="text">${r.family}</td>` +
        `<td class="text">${r.backbone || '-'}</td><td>${r.seeds}</td>` +
        cs.map(c => {
          const s = r.metrics[c];
          const cls = s && rows.length > 1 && Math.abs(s[0] - best[c]) < 1e-12 ? ' class="best"' : '';
          return `<td${cls} data-metric="${c}" data-value="${s ? s[0] : ''}">${fmt(s)}</td>`;
        }).join('') +
        `<td class="${r.sig === '▲' ? 'sig-up' : r.sig === '▼' ? 'sig-down' : ''}">${r.sig}</td>` +
        `<td>${secs(r.train_seconds)}</td><td>${secs(r.eval_seconds)}</td><td>${secs(r.cost_seconds)}</td>` +
        `<td class="text">${r.device}</td>` +
        `<td class="records">${r.records.map(x => `<a href="${x[1]}" title="run record, seed ${x[0]}">s${x[0]}</a>`).join('')}</td></tr>`;
    });
    h += '</tbody></table></div>' + plot(t, rows, slice) + tradeoff(t, rows, slice) + '</section>';
    out.push(h);
  });
  $('tables').innerHTML = out.join('');
  document.querySelectorAll('th[data-col]').forEach(th => th.onclick = () => {
    const ti = +th.closest('table').dataset.table, col = th.dataset.col;
    const prev = sortState[ti];
    sortState[ti] = {col, dir: prev && prev.col === col ? -prev.dir : (col === 'model' || col === 'cost' ? 1 : -1)};
    render();
  });
}
// ---- metric versus cost plot (SVG, no library) ----
const FONT = '11px system-ui, sans-serif';
const ctx = document.createElement('canvas').getContext('2d');
function textWidth(s, font) { ctx.font = font || FONT; return ctx.measureText(s).width; }
function unescape(s) { const e = document.createElement('textarea'); e.innerHTML = s; return e.value; }
function niceStep(span, n) {
  const raw = span / n, mag = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / mag;
  return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}
function decadeLabel(k) {
  const v = Math.pow(10, k);
  return k < 0 ? v.toFixed(-k) : v.toLocaleString('en-US');
}
const ALL_FAMILIES = [...new Set(DATA.rows.map(r => r.family))].sort();
const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2'];
function plot(t, rows, slice) {
  return scatter(rows, 'test/' + (slice === 'overall' ? '' : slice + '/') + DATA.significance[t.kind], {
    cls: 'plot', get: r => r.cost_seconds, log: true, what: 'or timing',
    title: 'cost of one run: training + evaluation seconds (log scale)',
    aria: 'against cost (training plus evaluation seconds)',
    tip: v => `${v.toFixed(1)} s`,
    caption: 'against the cost of one run (training + evaluation seconds, log scale).'});
}
// ---- accuracy versus a beyond-accuracy metric (diversity, novelty, ...) of ranking tables ----
function tradeoff(t, rows, slice) {
  const m = $('beyond').value;
  if (m === 'prompt tokens') {  // accuracy against the mean prompt length of LLM rows (any table)
    return scatter(rows, 'test/' + (slice === 'overall' ? '' : slice + '/') + DATA.significance[t.kind], {
      cls: 'tradeoff', get: r => r.prompt_tokens, log: false, what: 'or prompt length',
      title: 'mean prompt tokens (mean over seeds)', aria: 'against mean prompt tokens',
      tip: v => `${v.toFixed(0)} tokens`,
      caption: 'against the mean prompt length in tokens: one point per prompted model (template, examples, history budget).'});
  }
  if (t.kind !== 'ranking' || !m || (slice !== 'overall' && m.startsWith('gini'))) return '';
  const xm = 'test/' + (slice === 'overall' ? '' : slice + '/') + m, xname = xm.replace('test/', '');
  return scatter(rows, 'test/' + (slice === 'overall' ? '' : slice + '/') + DATA.significance[t.kind], {
    cls: 'tradeoff', get: r => r.metrics[xm] ? r.metrics[xm][0] : null, log: false, what: `or ${xname}`,
    title: `${xname} (mean over seeds${lowerIsBetter(xm) ? ', lower is better' : ''})`,
    aria: `against ${xname}`, tip: v => `${xname} ${v.toFixed(4)}`,
    caption: `against ${xname}: accuracy versus diversity, novelty or popularity of the lists, one point per model.`});
}
// One point per row: metric (y, linear) against x.get(row) (x: log10 decades or linear ticks).
function scatter(rows, metric, x) {
  const pts = rows.filter(r => r.metrics[metric] && x.get(r) != null);
  const missing = rows.length - pts.length;
  if (!pts.length) return '';
  const W = 860, H = 440, L = 72, R = 20, T = 30, B = 58;
  const pw = W - L - R, ph = H - T - B;
  const lx = pts.map(r => x.log ? Math.log10(Math.max(x.get(r), 0.01)) : x.get(r));
  let x0, x1, xstep, xdec = 0;
  if (x.log) {
    x0 = Math.floor(Math.min(...lx)); x1 = Math.ceil(Math.max(...lx));
    if (x1 <= x0) x1 = x0 + 1;
    xstep = x1 - x0 > 6 ? 2 : 1;
  } else {
    let xmin = Math.min(...lx), xmax = Math.max(...lx);
    if (xmax - xmin < 1e-9) { xmin -= 0.01; xmax += 0.01; }
    xstep = niceStep(xmax - xmin, 5);
    x0 = Math.floor(xmin / xstep - 0.25) * xstep; x1 = Math.ceil(xmax / xstep + 0.25) * xstep;
    xdec = Math.max(0, -Math.floor(Math.log10(xstep) + 1e-9));
  }
  const ys = pts.map(r => r.metrics[metric][0]);
  let ymin = Math.min(...ys), ymax = Math.max(...ys);
  if (ymax - ymin < 1e-9) { ymin -= 0.01; ymax += 0.01; }
  const step = niceStep(ymax - ymin, 5);
  const y0 = Math.floor(ymin / step - 0.25) * step, y1 = Math.ceil(ymax / step + 0.25) * step;
  const dec = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  const X = v => L + pw * (v - x0) / (x1 - x0), Y = v => T + ph - ph * (v - y0) / (y1 - y0);
  const families = [...new Set(pts.map(r => r.family))].sort();
  const color = f => PALETTE[ALL_FAMILIES.indexOf(f) % PALETTE.length];  // one colour per family on every plot
  const name = metric.replace('test/', '');
  let s = `<figure><svg class="${x.cls}" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" ` +
    `aria-label="${name} ${x.aria}">`;
  // grid, ticks and tick labels
  const xlim = x.log ? x1 : x1 + xstep / 2;  // decades: integers; linear: float steps
  for (let k = x0, i = 0; k <= xlim && i < 40; k += xstep, i++) {
    s += `<line class="grid" x1="${X(k)}" x2="${X(k)}" y1="${T}" y2="${T + ph}"></line>` +
      `<line class="axis" x1="${X(k)}" x2="${X(k)}" y1="${T + ph}" y2="${T + ph + 5}"></line>` +
      `<text class="x-tick" x="${X(k)}" y="${T + ph + 18}" text-anchor="middle" font-size="11">${x.log ? decadeLabel(k) : k.toFixed(xdec)}</text>`;
  }
  for (let v = y0, i = 0; v <= y1 + step / 2 && i < 40; v += step, i++) {
    s += `<line class="grid" x1="${L}" x2="${L + pw}" y1="${Y(v)}" y2="${Y(v)}"></line>` +
      `<line class="axis" x1="${L - 5}" x2="${L}" y1="${Y(v)}" y2="${Y(v)}"></line>` +
      `<text class="y-tick" x="${L - 8}" y="${Y(v) + 4}" text-anchor="end" font-size="11">${v.toFixed(dec)}</text>`;
  }
  s += `<line class="axis" x1="${L}" x2="${L + pw}" y1="${T + ph}" y2="${T + ph}"></line>` +
    `<line class="axis" x1="${L}" x2="${L}" y1="${T}" y2="${T + ph}"></line>` +
    `<text class="x-title" x="${L + pw / 2}" y="${H - 12}" text-anchor="middle" font-size="12">${x.title}</text>` +
    `<text class="y-title" x="16" y="${T + ph / 2}" font-size="12" transform="rotate(-90 16 ${T + ph / 2})" text-anchor="middle">${name} (mean over seeds)</text>`;
  // family legend, top left inside the frame
  let lxp = L + 8;
  families.forEach(f => {
    s += `<circle cx="${lxp + 4}" cy="${T - 14}" r="4" fill="${color(f)}"></circle>` +
      `<text x="${lxp + 12}" y="${T - 10}" font-size="11">${f || '-'}</text>`;
    lxp += 24 + textWidth(unescape(f || '-'));
  });
  // points, then labels placed greedily where they overlap nothing (else a number and a list below)
  const P = pts.map((r, i) => ({r, x: X(lx[i]), y: Y(ys[i])}));
  const boxes = P.map(p => ({x0: p.x - 5, x1: p.x + 5, y0: p.y - 5, y1: p.y + 5}));
  const hit = (b) => boxes.some(o => b.x0 < o.x1 && o.x0 < b.x1 && b.y0 < o.y1 && o.y0 < b.y1);
  const inside = (b) => b.x0 >= L + 2 && b.x1 <= L + pw - 2 && b.y0 >= T + 2 && b.y1 <= T + ph - 2;
  const order = P.map((p, i) => i).sort((a, b) => P[a].y - P[b].y || P[a].x - P[b].x);
  const unlabelled = [];
  let labels = '';
  order.forEach(i => {
    const p = P[i], text = unescape(p.r.model), w = textWidth(text), h = 12;
    const cands = [[8, -6, 'start'], [-8, -6, 'end'], [8, 6, 'start'], [-8, 6, 'end'],
                   [0, -16, 'middle'], [0, 16, 'middle'], [8, -18, 'start'], [-8, -18, 'end'], [8, 18, 'start'], [-8, 18, 'end']];
    const place = (txt, width) => {
      for (const [dx, dy, anchor] of cands) {
        const xs = anchor === 'start' ? p.x + dx : anchor === 'end' ? p.x + dx - width : p.x - width / 2;
        const b = {x0: xs - 1, x1: xs + width + 1, y0: p.y + dy - h / 2 - 1, y1: p.y + dy + h / 2 + 1};
        if (inside(b) && !hit(b)) { boxes.push(b); return {x: xs, y: p.y + dy + 4}; }
      }
      return null;
    };
    let at = place(text, w);
    if (at) { labels += `<text class="point-label" x="${at.x}" y="${at.y}" font-size="11">${p.r.model}</text>`; return; }
    const num = String(unlabelled.length + 1);
    unlabelled.push(p.r.model);
    at = place(num, textWidth(num)) || {x: p.x + 6, y: p.y - 6};
    labels += `<text class="point-label" x="${at.x}" y="${at.y}" font-size="10" font-weight="700">${num}</text>`;
  });
  P.forEach(p => {
    s += `<circle cx="${p.x}" cy="${p.y}" r="4.5" fill="${color(p.r.family)}" stroke="#fff" stroke-width="1">` +
      `<title>${p.r.model}: ${name} ${p.r.metrics[metric][0].toFixed(4)}, ${x.tip(x.get(p.r))}</title></circle>`;
  });
  s += labels + '</svg>';
  const notes = [];
  if (missing) notes.push(`${missing} row(s) without ${name} ${x.what} are not drawn.`);
  s += `<figcaption>${name} ${x.caption} ${notes.join(' ')}</figcaption>`;
  if (unlabelled.length) s += '<ol class="unlabelled">' + unlabelled.map(m => `<li>${m}</li>`).join('') + '</ol>';
  return s + '</figure>';
}
['slice', 'family', 'backbone', 'prompt', 'icl', 'history', 'beyond'].forEach(id => $(id).onchange = render);
render();
</script></main></body></html>
"""


def _finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_json(v) for v in obj]
    return obj


def record_href(run_dir: Path, out_dir: Path | None) -> str:
    """A relative, URL-quoted link from the page's folder to a run's ``record.json``."""
    target = Path(run_dir).resolve() / RECORD
    base = Path(out_dir).resolve() if out_dir is not None else Path.cwd()
    rel = os.path.relpath(target, base)
    return html.escape("/".join(quote(part) for part in Path(rel).parts))


def render_html(
    rows: list[dict[str, Any]], meta: dict[str, Any] | None = None, out_dir: Path | None = None
) -> str:
    """The leaderboard page with the rows embedded as JSON (no external resources).

    Args:
        rows: Rows from :func:`benchmark.results.leaderboard.aggregate`.
        meta: ``commit``, ``dirty``, ``generated``, ``source``, ``records``, ``skipped`` shown in the header.
        out_dir: Folder the page is written to; record links are relative to it.
    """
    meta = dict(meta or {})
    by_table = tables(rows)
    keys = list(by_table)
    esc = html.escape
    data = {
        "meta": {
            "commit": esc(str(meta["commit"])) if meta.get("commit") else None,
            "dirty": bool(meta.get("dirty")),
            "generated": esc(str(meta.get("generated", ""))),
            "source": esc(str(meta.get("source", ""))),
            "records": int(meta.get("records", sum(r["seeds"] for r in rows))),
            "skipped": int(meta.get("skipped", 0)),
        },
        "tables": [
            {
                "title": esc(table_title(k)),
                "setting": [esc(s) for s in by_table[k][0].get("setting", [])],
                "kind": kind_of(k[2]),
            }
            for k in keys
        ],
        "headline": {k: HEADLINE[k] for k in HEADLINE},
        "significance": SIGNIFICANCE_METRIC,
        "slices": list(SLICES),
        "beyond": BEYOND,
        "lower": [m.split("@")[0] for m in ["logloss", *BEYOND] if not higher_is_better(m)],
        "rows": [
            {
                "table": keys.index((r["dataset"], r["split"], r["eval"])),
                "model": esc(r["model"]),
                "family": esc(r["family"]),
                "backbone": esc(r["backbone"]),
                "prompt": esc(r.get("prompt", "")),
                "icl": esc(r.get("icl", "")),
                "history": esc(r.get("history", "")),
                "prompt_tokens": r.get("prompt_tokens"),
                "device": esc(r.get("device", "")),
                "seeds": r["seeds"],
                "train_seconds": r["train_seconds"],
                "eval_seconds": r.get("eval_seconds"),
                "cost_seconds": r.get("cost_seconds"),
                "sig": r["sig"],
                "metrics": {esc(m): list(v) for m, v in r["metrics"].items()},
                "records": [
                    [int(seed), record_href(d, out_dir)]
                    for seed, d in zip(r.get("seed_list", []), r.get("run_dirs", []), strict=False)
                ],
            }
            for r in rows
        ],
    }
    payload = json.dumps(_finite_json(data), sort_keys=True, allow_nan=False).replace("</", "<\\/")
    return PAGE.replace("__DATA__", payload)
