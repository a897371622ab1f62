"""A static, self-contained leaderboard page: sortable, filterable, with metric-versus-cost plots."""

from __future__ import annotations

import html
import json
from typing import Any

from benchmark.results.leaderboard import HEADLINE, SIGNIFICANCE_METRIC, SLICES, kind_of, table_title, tables

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>llm4rec-bench leaderboard</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
th{cursor:pointer;background:#f4f4f4;user-select:none}
td.name,th.name{text-align:left}
td.best{font-weight:bold;background:#eef7ee}
.controls label{margin-right:1.2em}
.sig-up{color:#080}.sig-down{color:#a00}
svg{border:1px solid #ddd;margin-bottom:2em}
</style></head><body>
<h1>llm4rec-bench leaderboard</h1>
<p>Mean ± std over seeds. Best mean per column highlighted. ▲/▼: significantly better/worse than the
best baseline of the table (paired Wilcoxon test over per-user values, Holm-corrected, p &lt; 0.05;
for labeled tables per-user AUC, which GAUC summarises, not the pooled AUC).
Click a column header to sort.</p>
<div class="controls">
<label>Slice <select id="slice"></select></label>
<label>Family <select id="family"></select></label>
<label>Backbone <select id="backbone"></select></label>
</div>
<div id="tables"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
const DATA = JSON.parse(document.getElementById('data').textContent);
const $ = (id) => document.getElementById(id);
function options(sel, values) {
  sel.innerHTML = values.map(v => `<option value="${v}">${v}</option>`).join('');
}
options($('slice'), ['overall'].concat(DATA.slices));
options($('family'), ['all'].concat([...new Set(DATA.rows.map(r => r.family))].sort()));
options($('backbone'), ['all'].concat([...new Set(DATA.rows.map(r => r.backbone || '-'))].sort()));
const sortState = {};
function fmt(s) { return s == null ? '—' : (s[1] == null ? s[0].toFixed(4) : s[0].toFixed(4) + ' ± ' + s[1].toFixed(4)); }
function cols(t, slice) {
  const base = DATA.headline[t.kind];
  return base.filter(m => !(slice !== 'overall' && m.startsWith('coverage')))
             .map(m => 'test/' + (slice === 'overall' ? '' : slice + '/') + m);
}
function render() {
  const slice = $('slice').value, fam = $('family').value, bb = $('backbone').value;
  const out = [];
  DATA.tables.forEach((t, ti) => {
    let rows = DATA.rows.filter(r => r.table === ti)
      .filter(r => fam === 'all' || r.family === fam)
      .filter(r => bb === 'all' || (r.backbone || '-') === bb);
    const cs = cols(t, slice);
    const st = sortState[ti];
    if (st) rows.sort((a, b) => {
      const va = st.col === 'model' ? a.model : (a.metrics[st.col] ? a.metrics[st.col][0] : -Infinity);
      const vb = st.col === 'model' ? b.model : (b.metrics[st.col] ? b.metrics[st.col][0] : -Infinity);
      return (va < vb ? -1 : va > vb ? 1 : 0) * st.dir;
    });
    const best = {};
    cs.forEach(c => {
      const v = rows.filter(r => r.metrics[c]).map(r => r.metrics[c][0]);
      if (v.length) best[c] = DATA.lower.includes(c.split('/').pop().split('@')[0]) ? Math.min(...v) : Math.max(...v);
    });
    let h = `<h2>${t.title}</h2><table data-table="${ti}"><thead><tr><th class="name" data-col="model">model</th>` +
      '<th>family</th><th>backbone</th><th>seeds</th>' +
      cs.map(c => `<th data-col="${c}">${c.replace('test/', '')}</th>`).join('') + '<th>train s</th><th>sig.</th></tr></thead><tbody>';
    rows.forEach(r => {
      h += `<tr data-model="${r.model}"><td class="name">${r.model}</td><td>${r.family}</td><td>${r.backbone || '-'}</td><td>${r.seeds}</td>` +
        cs.map(c => {
          const s = r.metrics[c];
          const cls = s && rows.length > 1 && Math.abs(s[0] - best[c]) < 1e-12 ? ' class="best"' : '';
          return `<td${cls} data-metric="${c}" data-value="${s ? s[0] : ''}">${fmt(s)}</td>`;
        }).join('') +
        `<td>${r.train_seconds.toFixed(1)}</td><td class="${r.sig === '▲' ? 'sig-up' : r.sig === '▼' ? 'sig-down' : ''}">${r.sig}</td></tr>`;
    });
    h += '</tbody></table>' + plot(t, rows, cs[Math.min(1, cs.length - 1)]);
    out.push(h);
  });
  $('tables').innerHTML = out.join('');
  document.querySelectorAll('th[data-col]').forEach(th => th.onclick = () => {
    const ti = +th.closest('table').dataset.table, col = th.dataset.col;
    const prev = sortState[ti];
    sortState[ti] = {col, dir: prev && prev.col === col ? -prev.dir : (col === 'model' ? 1 : -1)};
    render();
  });
}
function plot(t, rows, metric) {
  const pts = rows.filter(r => r.metrics[metric]);
  if (!pts.length) return '';
  const W = 420, H = 240, P = 40;
  const xs = pts.map(r => Math.log10(1 + r.train_seconds)), ys = pts.map(r => r.metrics[metric][0]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) + 1e-9, y0 = Math.min(...ys), y1 = Math.max(...ys) + 1e-9;
  const X = v => P + (W - 2 * P) * (v - x0) / (x1 - x0), Y = v => H - P - (H - 2 * P) * (v - y0) / (y1 - y0);
  let s = `<svg width="${W}" height="${H}" role="img"><text x="${W / 2}" y="${H - 8}" text-anchor="middle" font-size="11">log10(1 + train seconds)</text>` +
    `<text x="12" y="${H / 2}" font-size="11" transform="rotate(-90 12 ${H / 2})" text-anchor="middle">${metric.replace('test/', '')}</text>`;
  pts.forEach((r, i) => {
    s += `<circle cx="${X(xs[i])}" cy="${Y(ys[i])}" r="4" fill="#36c"></circle>` +
         `<text x="${X(xs[i]) + 6}" y="${Y(ys[i]) - 6}" font-size="10">${r.model}</text>`;
  });
  return s + '</svg>';
}
['slice', 'family', 'backbone'].forEach(id => $(id).onchange = render);
render();
</script></body></html>
"""


def render_html(rows: list[dict[str, Any]]) -> str:
    """The leaderboard page with the rows embedded as JSON (no external resources)."""
    keys = list(tables(rows))
    data = {
        "tables": [{"title": html.escape(table_title(k)), "kind": kind_of(k[2])} for k in keys],
        "headline": {k: HEADLINE[k] for k in HEADLINE},
        "significance": SIGNIFICANCE_METRIC,
        "slices": list(SLICES),
        "lower": ["logloss"],
        "rows": [
            {
                "table": keys.index((r["dataset"], r["split"], r["eval"])),
                "model": html.escape(r["model"]),
                "family": html.escape(r["family"]),
                "backbone": html.escape(r["backbone"]),
                "seeds": r["seeds"],
                "train_seconds": r["train_seconds"],
                "sig": r["sig"],
                "metrics": {m: list(v) for m, v in r["metrics"].items()},
            }
            for r in rows
        ],
    }
    payload = json.dumps(data, sort_keys=True).replace("</", "<\\/")
    return PAGE.replace("__DATA__", payload)
