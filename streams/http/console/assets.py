"""The console's one stylesheet and one script, served from
``/console/login/assets/`` (under the sign-in prefix, so the sign-in form is styled
before the token is given; they hold no data). No build step, no CDN: the
``Content-Security-Policy`` allows scripts and styles from this origin only."""

from __future__ import annotations

CSS = """
:root { --fg:#1d2330; --muted:#5d6675; --line:#dde1e7; --bg:#f6f7f9; --card:#fff; --accent:#2456c7;
        --ok:#1f7a3d; --warn:#a45b00; --bad:#b3261e; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
* { box-sizing: border-box; }
body { margin:0; color:var(--fg); background:var(--bg); font-size:14px; line-height:1.45; }
header { display:flex; flex-wrap:wrap; align-items:center; gap:12px 18px; padding:10px 20px; background:#1d2330; color:#fff; }
header a { color:#dbe4ff; text-decoration:none; }
header a.brand { font-weight:700; color:#fff; font-size:16px; }
header nav { display:flex; gap:14px; } header nav a.active { color:#fff; border-bottom:2px solid #8fb0ff; }
header .who { margin-left:auto; }
form.lookup { display:flex; gap:4px; }
form.lookup input { width:150px; }
main { padding:16px 20px 40px; max-width:1400px; }
h1 { font-size:20px; margin:4px 0 14px; } h2 { font-size:16px; margin:18px 0 8px; } h3 { font-size:14px; margin:12px 0 6px; }
input, select, button { font:inherit; padding:4px 8px; border:1px solid #b8c0cc; border-radius:4px; background:#fff; color:var(--fg); }
button { background:var(--accent); color:#fff; border-color:var(--accent); cursor:pointer; }
button.secondary { background:#fff; color:var(--accent); }
button.danger { background:var(--bad); border-color:var(--bad); }
button.link { background:none; border:none; color:#dbe4ff; padding:0; text-decoration:underline; }
button:disabled { opacity:.5; cursor:default; }
form.inline { display:inline; }
table { border-collapse:collapse; width:100%; background:var(--card); margin:4px 0 10px; }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#eef1f5; font-weight:600; font-size:12px; color:var(--muted); }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
code, pre, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size:12.5px; }
pre { background:#fbfbfc; border:1px solid var(--line); padding:10px; overflow:auto; max-height:480px; white-space:pre-wrap; word-break:break-all; }
.card { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:12px 14px; margin:0 0 14px; }
.grid { display:grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap:14px; }
.muted, .empty { color:var(--muted); }
.badge { display:inline-block; padding:1px 7px; border-radius:9px; font-size:12px; background:#e7ecf5; color:#27406f; }
.badge.ok { background:#e2f3e7; color:var(--ok); } .badge.warn { background:#fff1dc; color:var(--warn); }
.badge.bad { background:#fbe4e2; color:var(--bad); }
.kv { display:grid; grid-template-columns:max-content 1fr; gap:4px 16px; }
.kv dt { color:var(--muted); } .kv dd { margin:0; }
.big { font-size:28px; font-weight:700; }
.filters { display:flex; flex-wrap:wrap; gap:8px; align-items:end; margin-bottom:10px; }
.filters label { display:flex; flex-direction:column; font-size:12px; color:var(--muted); gap:2px; }
.actions { display:flex; flex-wrap:wrap; gap:8px; align-items:center; margin:8px 0; }
.notice { padding:8px 12px; border-radius:4px; background:#eef3ff; border:1px solid #c9d7fb; margin:8px 0; }
.notice.bad { background:#fbe4e2; border-color:#f1b8b2; } .notice.warn { background:#fff6e6; border-color:#f4d39c; }
ol.timeline { list-style:none; margin:0; padding:0 0 0 18px; border-left:3px solid #c9d3e6; }
ol.timeline li { position:relative; margin:0 0 12px; padding-left:10px; }
ol.timeline li::before { content:""; position:absolute; left:-27px; top:4px; width:13px; height:13px; border-radius:50%;
                         background:var(--accent); border:2px solid #fff; }
ol.timeline li.parked::before { background:var(--warn); }
ol.timeline .type { font-weight:600; } ol.timeline .meta { color:var(--muted); font-size:12.5px; }
progress { width:320px; height:14px; }
.login { max-width:380px; margin:60px auto; }
.login input { width:100%; margin:6px 0 10px; }
tr.redriven td { color:var(--muted); }
"""

JS = """
'use strict';
// Live regions: <div data-live="/console/…" data-every="2000"> gets its HTML from the
// server again every few seconds (the server escapes it); stops once it holds [data-final].
function live(el) {
  const every = parseInt(el.dataset.every || '2000', 10);
  async function tick() {
    try {
      const r = await fetch(el.dataset.live, {credentials: 'same-origin', headers: {'Accept': 'text/html'}});
      if (r.ok) { el.innerHTML = await r.text(); el.dataset.refreshed = String(Date.now()); }
    } catch (err) { /* worker restarting: try again */ }
    if (!el.querySelector('[data-final]')) setTimeout(tick, every);
  }
  if (!el.querySelector('[data-final]')) setTimeout(tick, every);
}
// Dead letter selection: "select all" and the selected count on the redrive button.
function selection(form) {
  const boxes = () => Array.from(form.querySelectorAll('input[type=checkbox][name=id]'));
  const button = form.querySelector('[data-needs-selection]');
  const all = form.querySelector('[data-select-all]');
  function update() {
    const n = boxes().filter(b => b.checked).length;
    if (button) { button.disabled = n === 0; button.textContent = button.dataset.label.replace('N', String(n)); }
  }
  if (all) all.addEventListener('change', () => { boxes().forEach(b => { b.checked = all.checked; }); update(); });
  boxes().forEach(b => b.addEventListener('change', update));
  update();
}
document.addEventListener('DOMContentLoaded', () => {
  document.querySelectorAll('[data-live]').forEach(live);
  document.querySelectorAll('form[data-selection]').forEach(selection);
});
"""
