// The library: items with labels and search, one item's versions and timeline (72 hours by
// default, zoomable) with rollback from the timeline, the prune preview, upload and download.

import { api, all, explain } from './api.js';
import { h, fill, time, bytes, table, spinner, errorBox, confirm, toast } from './ui.js';
import { session } from './app.js';
import { uploadPanel } from './upload.js';

const HOUR = 3600 * 1000;
/** Zoom steps of the timeline, in hours. */
const SPANS = [1, 6, 24, 72, 168, 720];
const DEFAULT_SPAN = 72;

const enc = encodeURIComponent;

function kindText(kind) {
  if (!kind || typeof kind !== 'object') return kind || '–';
  if (kind.type === 'iso') return `ISO “${kind.volume_id}”`;
  if (kind.type === 'disk') return `${kind.format} disk, ${bytes(kind.virtual_size)} virtual`;
  return 'raw';
}

function signature(signedBy) {
  return signedBy ? h('span', { class: 'ok', title: `signed by ${signedBy}` }, '✔ signed') : h('span', { class: 'muted' }, 'unsigned');
}

/** The item list. */
export async function libraryPage() {
  const results = h('div', {}, spinner());
  const q = h('input', { id: 'search', type: 'search', placeholder: 'name contains…', 'aria-label': 'Search items by name' });
  const label = h('input', { id: 'label', placeholder: 'key=value', 'aria-label': 'Filter by label (key=value)' });
  const removed = h('input', { id: 'removed', type: 'checkbox' });
  async function load() {
    fill(results, spinner());
    const params = new URLSearchParams();
    if (q.value.trim()) params.set('q', q.value.trim());
    if (label.value.trim()) params.set('label', label.value.trim());
    if (removed.checked) params.set('removed', 'true');
    try {
      const items = await all(`/api/v1/library/items?${params}`);
      // Labels live on versions: read the current version of the first items shown.
      const labels = await Promise.all(items.slice(0, 200).map((item) => (item.current
        ? api(`/api/v1/library/items/${enc(item.name)}/versions/${item.current}`).then((v) => v.labels, () => ({}))
        : Promise.resolve({}))));
      fill(results, items.length === 0
        ? h('p', {}, 'No item matches. Upload an image below, or clear the search.')
        : table(`${items.length} item${items.length === 1 ? '' : 's'}`,
          ['Item', 'Labels', ['Current', 'num'], 'Kind', ['Size', 'num'], ['Versions', 'num'], 'Updated', ''],
          items.map((item, i) => [
            h('a', { href: `#/library/${enc(item.name)}` }, item.name, item.removed ? ' (removed)' : ''),
            Object.entries(labels[i] || {}).map(([k, v]) => h('span', { class: 'chip' }, `${k}=${v}`)),
            item.current ?? '–', item.kind || '–', bytes(item.size), item.versions, time(item.updated),
            item.current ? h('a', { href: `/api/v1/library/items/${enc(item.name)}/versions/current/content`, download: item.name }, 'Download') : '',
          ])));
    } catch (e) {
      fill(results, errorBox(explain(e)));
    }
  }
  const form = h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); load(); } },
    h('div', {}, h('label', { for: 'search' }, 'Search'), q),
    h('div', {}, h('label', { for: 'label' }, 'Label'), label),
    h('div', {}, h('label', { for: 'removed' }, 'Removed items'), removed),
    h('button', { type: 'submit' }, 'Filter'),
    h('a', { class: 'button ghost', href: '#/prune' }, 'Prune preview'));
  load();
  return h('div', {},
    h('h1', {}, 'Library'),
    h('div', { class: 'panel' }, form, results),
    session.who.may_change ? uploadPanel(null, load) : h('p', { class: 'muted' }, `${session.who.name} is readonly: uploads, rollbacks and removals are not offered.`));
}

/** The timeline of one item: events on a time axis, the current version as a step line. */
function timeline(history, onPick) {
  let span = DEFAULT_SPAN;
  let end = Date.now();
  const events = history.events.map((e) => ({ ...e, t: new Date(e.time).getTime() }));
  const maxVersion = Math.max(1, ...history.versions.map((v) => v.version));
  const svgBox = h('div', {});
  const caption = h('p', { class: 'muted', id: 'timeline-range' });
  const W = 1000; const H = 150; const left = 40; const right = 10; const top = 14; const bottom = 26;
  function draw() {
    const start = end - span * HOUR;
    const x = (t) => left + ((t - start) / (end - start)) * (W - left - right);
    const y = (v) => top + (1 - (v - 1) / Math.max(1, maxVersion - 1)) * (H - top - bottom);
    const svg = h('svg', { class: 'plot', viewBox: `0 0 ${W} ${H}`, role: 'group', 'aria-label': `Timeline of ${history.name}` });
    const axis = h('g', { class: 'axis' });
    const ticks = 6;
    for (let i = 0; i <= ticks; i++) {
      const t = start + ((end - start) * i) / ticks;
      const d = new Date(t);
      axis.append(h('line', { x1: x(t), x2: x(t), y1: top, y2: H - bottom }),
        h('text', { x: x(t), y: H - 8, 'text-anchor': i === 0 ? 'start' : i === ticks ? 'end' : 'middle' },
          span <= 24 ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : d.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit' })));
    }
    axis.append(h('text', { x: 2, y: top + 4 }, `v${maxVersion}`), h('text', { x: 2, y: H - bottom }, 'v1'));
    svg.append(axis);
    // Which version was current from each event to the next.
    const points = [];
    let current = null;
    for (const e of events) {
      if (e.kind === 'remove') { if (current !== null) points.push([e.t, current]); current = null; continue; }
      if (e.version) { if (current !== null) points.push([e.t, current]); current = e.version; points.push([e.t, current]); }
    }
    if (current !== null) points.push([Date.now(), current]);
    if (points.length) {
      svg.append(h('polyline', { points: points.map(([t, v]) => `${x(Math.max(start, Math.min(end, t)))},${y(v)}`).join(' '),
        fill: 'none', stroke: 'currentColor', 'stroke-width': 2, opacity: 0.5 }));
    }
    const visible = events.filter((e) => e.t >= start && e.t <= end);
    for (const e of visible) {
      const label = `${e.kind} ${e.version ? `version ${e.version}` : ''} at ${new Date(e.t).toLocaleString()} by ${e.actor}${e.note ? ` (${e.note})` : ''}`;
      const mark = h('circle', { class: `mark ev-${e.kind}`, cx: x(e.t), cy: e.version ? y(e.version) : H - bottom - 6, r: 7,
        tabindex: 0, role: 'button', 'aria-label': label, dataset: { version: e.version || '', kind: e.kind } },
      h('title', {}, label));
      mark.addEventListener('click', () => onPick(e));
      mark.addEventListener('keydown', (k) => { if (k.key === 'Enter' || k.key === ' ') { k.preventDefault(); onPick(e); } });
      svg.append(mark);
    }
    fill(svgBox, svg);
    fill(caption, `${new Date(start).toLocaleString()} – ${new Date(end).toLocaleString()} (${span} h): ${visible.length} of ${events.length} events shown.`);
  }
  const zoom = (dir) => { const i = SPANS.indexOf(span); span = SPANS[Math.max(0, Math.min(SPANS.length - 1, i + dir))]; draw(); };
  const controls = h('div', { class: 'row' },
    h('button', { type: 'button', class: 'ghost', onclick: () => zoom(-1), 'aria-label': 'Zoom in' }, 'Zoom in'),
    h('button', { type: 'button', class: 'ghost', onclick: () => zoom(1), 'aria-label': 'Zoom out' }, 'Zoom out'),
    h('button', { type: 'button', class: 'ghost', onclick: () => { end -= (span * HOUR) / 2; draw(); } }, '← Earlier'),
    h('button', { type: 'button', class: 'ghost', onclick: () => { end = Math.min(Date.now(), end + (span * HOUR) / 2); draw(); } }, 'Later →'),
    h('button', { type: 'button', class: 'ghost', onclick: () => { span = DEFAULT_SPAN; end = Date.now(); draw(); } }, 'Last 72 h'));
  const legend = h('div', { class: 'legend' }, ['add', 'rollback', 'remove', 'restore'].map((k) => h('span', {},
    h('svg', { viewBox: '0 0 10 10', 'aria-hidden': 'true' }, h('circle', { cx: 5, cy: 5, r: 5, class: `ev-${k}` })), ` ${k}`)));
  draw();
  return h('div', { class: 'timeline', id: 'timeline' }, controls, svgBox, legend, caption);
}

/** A part of a version's size (new or shared bytes), with its share on hover. */
function sharePart(n, size) {
  if (n === null || n === undefined) return h('span', { class: 'muted', title: 'pruned, or an earlier manifest cannot be read' }, '–');
  return h('span', { title: size ? `${((n / size) * 100).toFixed(1)} % of ${bytes(size)}` : '' }, bytes(n));
}

/** One item: versions, timeline, rollback, download, upload of a new version. */
export async function itemPage(name) {
  const root = h('div', {});
  // Made once: a reload after an upload keeps its progress and result on screen.
  const upload = session.who.may_change ? uploadPanel(name, () => reload()) : null;
  async function load() {
    const history = await api(`/api/v1/library/items/${enc(name)}`);
    const etag = history.etag;
    const currentVersion = history.versions.find((v) => v.current);
    const pick = h('div', { id: 'timeline-pick', 'aria-live': 'polite' },
      h('p', { class: 'muted' }, 'Choose an event on the timeline (click, or Tab and Enter) to see it and roll back to its version.'));
    const detail = h('div', { id: 'version-detail' });

    async function rollback(version) {
      const target = history.versions.find((v) => v.version === version);
      const ok = await confirm(`Roll back ${name}?`, [
        h('p', {}, `Version ${version} becomes current instead of version ${history.current ?? 'none'}.`),
        h('dl', { class: 'kv' },
          h('dt', {}, 'Now current'), h('dd', {}, currentVersion ? `v${currentVersion.version}, ${bytes(currentVersion.size)}, ${currentVersion.digest.slice(0, 19)}…, created ` : '–', currentVersion ? time(currentVersion.created) : ''),
          h('dt', {}, 'Will be current'), h('dd', {}, `v${version}, ${bytes(target.size)}, ${target.digest.slice(0, 19)}…, created `, time(target.created))),
        h('p', {}, `Clients that open “${name}” without a version number get version ${version} from their next open; version ${history.current} stays in the history and can be made current again.`),
      ], `Make version ${version} current`);
      if (!ok) return;
      try {
        await api(`/api/v1/library/items/${enc(name)}/rollback`, { method: 'POST', body: { to: version }, headers: { 'If-Match': etag } });
        toast(`Version ${version} of ${name} is current.`);
      } catch (e) {
        const { what, todo } = explain(e);
        toast(`Rollback failed: ${what}. ${todo}`);
      }
      await reload();
    }

    function onPick(event) {
      const v = event.version ? history.versions.find((x) => x.version === event.version) : null;
      const canRoll = session.who.may_change && v && !v.current && !v.pruned;
      fill(pick, h('div', { class: 'panel' },
        h('strong', {}, `${event.kind}${event.version ? ` of version ${event.version}` : ''}`), ' at ', time(event.time), ` by ${event.actor}`,
        event.note ? h('p', { class: 'muted' }, event.note) : null,
        v && v.current ? h('p', {}, `Version ${v.version} is current.`) : null,
        v && v.pruned ? h('p', {}, `Version ${v.version} was pruned (${v.pruned}): it cannot come back.`) : null,
        canRoll ? h('button', { type: 'button', id: 'rollback-button', onclick: () => rollback(v.version) }, `Roll back to version ${v.version}`) : null));
      if (v) showVersion(v.version);
    }

    async function showVersion(version) {
      fill(detail, spinner());
      try {
        const v = await api(`/api/v1/library/items/${enc(name)}/versions/${version}`);
        const kind = v.kind || {};
        fill(detail, h('div', { class: 'panel' }, h('h2', {}, `Version ${v.version}${v.current ? ' (current)' : ''}`),
          h('dl', { class: 'kv' },
            h('dt', {}, 'Digest'), h('dd', { class: 'mono' }, v.digest),
            h('dt', {}, 'Size'), h('dd', {}, bytes(v.size)),
            h('dt', {}, 'New / shared'), h('dd', {}, v.new_bytes == null ? h('span', { class: 'muted' }, 'unknown (an earlier version’s manifest cannot be read)')
              : `${bytes(v.new_bytes)} new, ${bytes(v.shared_bytes)} shared with earlier versions of ${name}`),
            h('dt', {}, 'Stored'), h('dd', {}, `${bytes(v.stored_bytes)} in ${v.chunks} chunks (compressed; chunks shared with other versions are stored once)`),
            h('dt', {}, 'Signature'), h('dd', {}, signature(v.signed_by)),
            h('dt', {}, 'Created'), h('dd', {}, time(v.created), ` by ${v.actor}`),
            h('dt', {}, 'Note'), h('dd', {}, v.note || '–'),
            h('dt', {}, 'Labels'), h('dd', {}, Object.keys(v.labels).length ? Object.entries(v.labels).map(([k, x]) => h('span', { class: 'chip' }, `${k}=${x}`)) : '–'),
            h('dt', {}, 'Content'), h('dd', {}, kindText(kind)),
            kind.type === 'iso' && kind.boot_entries && kind.boot_entries.length ? [h('dt', {}, 'Boot entries'),
              h('dd', {}, kind.boot_entries.map((b) => h('span', { class: 'chip' }, Object.entries(b).map(([k, x]) => `${k}: ${typeof x === 'object' ? JSON.stringify(x) : x}`).join(', '))))] : null,
            kind.type === 'disk' ? [h('dt', {}, 'Format'), h('dd', {}, `${kind.format}, virtual size ${bytes(kind.virtual_size)}`)] : null),
          h('p', {}, h('a', { class: 'button ghost', href: `/api/v1/library/items/${enc(name)}/versions/${v.version}/content`, download: `${name}-v${v.version}` }, `Download version ${v.version}`))));
      } catch (e) {
        fill(detail, errorBox(explain(e)));
      }
    }

    const usagePanel = h('div', { class: 'panel', id: 'usage' }, h('h2', {}, 'Where used'), spinner());
    async function loadUsage() {
      try {
        const u = await api(`/api/v1/library/items/${enc(name)}/usage`);
        const used = u.versions.filter((v) => v.systems.length || v.clones.length || v.netboot.length);
        fill(usagePanel, h('h2', {}, 'Where used'),
          h('p', {}, `${u.systems} systems, ${u.clones} clones, ${u.netboot} netboot references.`),
          used.length ? table(null, [['Version', 'num'], 'Systems', 'Clones', 'Netboot'], used.map((v) => [v.version,
            v.systems.slice(0, 50).map((id) => h('a', { class: 'chip', href: `#/systems/${enc(id)}` }, id)).concat(v.systems.length > 50 ? [` and ${v.systems.length - 50} more`] : []),
            v.clones.join(', ') || '–', v.netboot.join(', ') || '–'])) : null);
      } catch (e) {
        fill(usagePanel, h('h2', {}, 'Where used'), errorBox(explain(e)));
      }
    }
    const rows = history.versions.slice().reverse();
    fill(root,
      h('p', {}, h('a', { href: '#/library' }, '← Library')),
      h('h1', {}, name, history.removed ? ' (removed)' : ''),
      h('p', { id: 'current-version' }, history.current ? `Current version: ${history.current}` : 'No current version'),
      h('div', { class: 'panel' }, h('h2', {}, 'Timeline'), timeline(history, onPick), pick),
      h('div', { class: 'panel', id: 'versions' }, h('h2', {}, 'Versions'),
        h('p', { class: 'muted' }, 'New: bytes in chunks no earlier version of this item uses (what this version added). Shared: the rest, already held for an earlier version.'),
        table(null, [['Version', 'num'], 'Created', ['Size', 'num'], ['New', 'num'], ['Shared', 'num'], 'Kind', 'Digest', 'Signature', 'State', ''],
          rows.map((v) => [v.version, time(v.created), bytes(v.size), sharePart(v.new_bytes, v.size), sharePart(v.shared_bytes, v.size), v.kind, h('span', { class: 'mono', title: v.digest }, `${v.digest.slice(0, 19)}…`),
            signature(v.signed_by), v.current ? 'current' : v.pruned ? `pruned: ${v.pruned}` : 'kept',
            h('button', { type: 'button', class: 'ghost', onclick: () => showVersion(v.version) }, 'Details')]),
          (i) => ({ class: rows[i].current ? 'current' : null, dataset: { version: rows[i].version } }))),
      detail,
      usagePanel,
      upload);
    if (currentVersion) showVersion(currentVersion.version);
    loadUsage();
  }
  async function reload() {
    try { await load(); } catch (e) { fill(root, errorBox(explain(e))); }
  }
  await load();
  return root;
}

/** What prune would release now, and what it keeps. */
export async function prunePage() {
  const report = await api('/api/v1/library/prune-preview');
  return h('div', {},
    h('p', {}, h('a', { href: '#/library' }, '← Library')),
    h('h1', {}, 'Prune preview'),
    h('p', {}, `Nothing is changed. Versions are kept for ${Math.round(report.keep_within_seconds / 3600)} hours`,
      report.keep_last ? ` and the last ${report.keep_last} of each item` : '', '; as of ', time(report.now), '.'),
    h('div', { class: 'panel' }, h('h2', {}, `Would release (${report.pruned.length})`),
      report.pruned.length ? table(null, ['Item', ['Version', 'num'], ['Size', 'num'], 'Why'],
        report.pruned.map((p) => [p.name, p.version, bytes(p.size), p.reason])) : h('p', {}, 'Nothing: every version is still needed.')),
    h('div', { class: 'panel' }, h('h2', {}, `Keeps (${report.kept.length})`),
      table(null, ['Item', ['Version', 'num'], 'Why'], report.kept.map((k) => [k.name, k.version, k.reason]))));
}
