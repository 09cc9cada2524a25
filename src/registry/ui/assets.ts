// The web page's one script and one style sheet, shipped in the package as strings: no
// bundler, no network, nothing to copy beside dist/. The script only enhances pages that
// work without it: copy buttons, and a why-chain fetched from the JSON API in place of a
// page load. It writes text with textContent only, never markup.
//
// Room: registry, the top room. May import src/build, src/blobs and src/oci; no room imports it.

export const SCRIPT = String.raw`'use strict';
(function () {
  function copied(button) {
    button.textContent = 'Copied';
    setTimeout(function () { button.textContent = 'Copy'; }, 1500);
  }
  function copy(button) {
    var text = button.getAttribute('data-copy') || '';
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { copied(button); }, function () {});
      return;
    }
    var area = document.createElement('textarea');
    area.value = text;
    document.body.appendChild(area);
    area.select();
    try { document.execCommand('copy'); copied(button); } catch (e) { /* the command stays selectable */ }
    area.remove();
  }
  function size(n) {
    var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    var u = 0;
    while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
    return (u === 0 ? String(n) : n.toFixed(n < 10 ? 2 : 1)) + ' ' + units[u];
  }
  function showWhy(box, chain) {
    box.textContent = '';
    var h = document.createElement('h2');
    h.append('Why ');
    var code = document.createElement('code');
    code.textContent = chain[chain.length - 1].path;
    h.append(code, ' is there');
    var ol = document.createElement('ol');
    ol.className = 'why';
    chain.forEach(function (c) {
      var li = document.createElement('li');
      var p = document.createElement('code');
      p.textContent = c.path;
      var s = document.createElement('span');
      s.className = 'num';
      s.textContent = size(c.narSize);
      li.append(p, ' ', s);
      ol.append(li);
    });
    box.append(h, ol);
  }
  function why(link, box) {
    var path = link.getAttribute('data-why');
    var here = new URL(location.href);
    var api = '/nixreg/api/repositories/' + here.searchParams.get('name') + '/images/'
      + encodeURIComponent(here.searchParams.get('ref') || '') + '/closure?n=0&why=' + encodeURIComponent(path);
    document.querySelectorAll('rect.selected').forEach(function (r) { r.classList.remove('selected'); });
    document.querySelectorAll('rect[data-path]').forEach(function (r) { if (r.getAttribute('data-path') === path) r.classList.add('selected'); });
    fetch(api, { credentials: 'same-origin', headers: { Accept: 'application/json' } })
      .then(function (r) { if (!r.ok) throw new Error(String(r.status)); return r.json(); })
      .then(function (d) {
        showWhy(box, d.why);
        here.searchParams.set('why', path);
        history.replaceState(null, '', here.pathname + here.search + '#why');
      })
      .catch(function () { location.href = link.getAttribute('href') || link.getAttribute('xlink:href') || location.href; });
  }
  function start(button) {
    var note = document.querySelector('.build-note');
    button.disabled = true;
    fetch('/nixreg/builds', {
      method: 'POST', credentials: 'same-origin', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ repository: button.getAttribute('data-repository'), tag: 'latest' }),
    }).then(function (r) { return r.json().then(function (d) { return { ok: r.ok, d: d }; }); })
      .then(function (x) {
        if (x.ok) { location.href = '/build?id=' + encodeURIComponent(x.d.id); return; }
        button.disabled = false;
        if (note) note.textContent = (x.d.errors && x.d.errors[0] && x.d.errors[0].message) || 'the build could not be started';
      })
      .catch(function () { button.disabled = false; });
  }
  // A build page: the stage and bar from /nixreg/builds/<id> each second, the log as it is written.
  function follow(box) {
    var id = box.getAttribute('data-id');
    var bar = box.querySelector('progress');
    var poll = function () {
      fetch('/nixreg/builds/' + encodeURIComponent(id), { credentials: 'same-origin' })
        .then(function (r) { return r.json(); })
        .then(function (b) {
          box.setAttribute('data-status', b.status);
          box.querySelector('.seconds').textContent = String(b.seconds);
          var p = b.progress;
          var words = { queued: 'waiting for a free build slot', evaluating: 'evaluating its expression', building: 'building with Nix', assembling: 'assembling layers' };
          var stage = b.status === 'done' || b.status === 'failed' ? b.status : words[p.stage] || p.stage;
          if (b.status === 'building' && p.paths.total) stage = 'building derivation ' + Math.min(p.paths.done + 1, p.paths.total) + ' of ' + p.paths.total;
          if (b.status === 'assembling' && p.layers.total) stage = 'assembling layer ' + Math.min(p.layers.done + 1, p.layers.total) + ' of ' + p.layers.total;
          box.querySelector('.stage').textContent = stage;
          if (b.status === 'done') { bar.max = 1; bar.value = 1; }
          else if (p.stage === 'assembling' && p.bytes.total) { bar.max = p.bytes.total; bar.value = p.bytes.done; }
          else if (p.stage === 'building' && p.paths.total) { bar.max = p.paths.total; bar.value = p.paths.done; }
          if (b.error) box.querySelector('.error').textContent = b.error;
          if (b.status === 'done' && b.hash) {
            var result = box.querySelector('.result');
            result.textContent = 'Built: ';
            var a = document.createElement('a');
            a.href = '/image?name=' + encodeURIComponent(b.repository) + '&ref=' + encodeURIComponent(b.hash);
            a.textContent = b.repository + ':' + b.hash;
            result.append(a);
          }
          if (b.status !== 'done' && b.status !== 'failed') setTimeout(poll, 1000);
        })
        .catch(function () { setTimeout(poll, 3000); });
    };
    poll();
    var log = document.getElementById('log');
    if (!log || !window.TextDecoder) return;
    fetch(log.getAttribute('data-src') + '?follow=1', { credentials: 'same-origin' }).then(function (r) {
      var reader = r.body.getReader();
      var decoder = new TextDecoder();
      var read = function () {
        return reader.read().then(function (c) {
          if (c.done) return;
          log.append(decoder.decode(c.value, { stream: true }));
          log.scrollTop = log.scrollHeight;
          return read();
        });
      };
      return read();
    }).catch(function () {});
  }
  var box = document.getElementById('build');
  if (box) follow(box);
  document.addEventListener('click', function (ev) {
    var t = ev.target;
    if (!(t instanceof Element)) return;
    var button = t.closest('button.copy');
    if (button) { copy(button); return; }
    var builder = t.closest('button.build');
    if (builder) { start(builder); return; }
    var link = t.closest('[data-why]');
    var box = document.getElementById('why');
    if (link && box && !ev.ctrlKey && !ev.metaKey && !ev.shiftKey) { ev.preventDefault(); why(link, box); }
  });
})();
`;

/** The page's icon (browsers ask for one; without it every page logs a 404). */
export const ICON = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#2f6fdb"/>'
  + '<rect x="3" y="4" width="10" height="2" fill="#fff"/><rect x="3" y="7" width="7" height="2" fill="#fff"/><rect x="3" y="10" width="4" height="2" fill="#fff"/></svg>';

export const STYLE = String.raw`:root { --fg: #1d2127; --muted: #5f6b7a; --line: #d8dee6; --accent: #2f6fdb; --bg: #fff; --box: #7aa7f0; --big: #e0793a; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; justify-content: space-between; align-items: center; padding: .6rem 1.2rem; border-bottom: 1px solid var(--line); background: #f6f8fa; }
.brand { font-weight: 700; font-size: 1.1rem; color: var(--fg); text-decoration: none; }
.who { color: var(--muted); }
main { max-width: 1040px; margin: 0 auto; padding: 1rem 1.2rem 3rem; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
nav { color: var(--muted); margin-bottom: .4rem; }
h1 { font-size: 1.5rem; margin: .4rem 0 1rem; word-break: break-all; }
h2 { font-size: 1.15rem; margin: 1.6rem 0 .6rem; }
code { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; word-break: break-all; }
code.line { display: block; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid var(--line); vertical-align: top; }
thead th { color: var(--muted); font-weight: 600; }
table.facts th, table.config th, table.pull th { width: 9rem; color: var(--muted); font-weight: 600; }
.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
span.num { color: var(--muted); }
.kind { font-size: .8rem; font-weight: 500; color: var(--muted); border: 1px solid var(--line); border-radius: 1rem; padding: 0 .5rem; vertical-align: middle; }
.note, .empty { color: var(--muted); }
.error { color: #b3261e; }
form.search, form.compare { display: flex; gap: .5rem; align-items: center; margin: .5rem 0 1rem; }
input { font: inherit; padding: .3rem .5rem; border: 1px solid var(--line); border-radius: 4px; min-width: 14rem; }
button { font: inherit; padding: .3rem .8rem; border: 1px solid var(--line); border-radius: 4px; background: #f6f8fa; cursor: pointer; }
button:hover { background: #eaeef2; }
.scroll { overflow-x: auto; }
svg.closure text { font: 12px system-ui, sans-serif; fill: var(--muted); }
svg.closure rect.path { fill: var(--box); stroke: #fff; stroke-width: .5; cursor: pointer; }
svg.closure rect.path.biggest { fill: var(--big); }
svg.closure rect.path:hover, svg.closure rect.path.selected { fill: #1c4fa8; }
ol.why li { margin: .2rem 0; }
ul.paths { padding-left: 1.2rem; }
p.download { font-size: 1.05rem; }
header a { margin-right: 1rem; }
progress { width: 100%; height: 1rem; }
pre#log { background: #f6f8fa; border: 1px solid var(--line); padding: .6rem; max-height: 28rem; overflow: auto; font-size: 12px; white-space: pre-wrap; }
td.status.failed { color: #b3261e; }
td.status.done { color: #1a7f37; }
`;
