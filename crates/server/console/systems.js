// Systems (the VMs the daemon manages): list with power, boot override and media; one system
// with power actions, boot once from CD/disk/network, media insert and eject (library or URL),
// the serial console following live, the last boot's timeline and what it uses; batch attach
// of one image to many systems by label selector or list, with per-system results as they come.

import { api, all, explain } from './api.js';
import { h, fill, time, bytes, table, spinner, errorBox, confirm, toast } from './ui.js';
import { session, onLeave } from './app.js';

const enc = encodeURIComponent;
/** How often a running task is polled. */
const POLL_MS = 400;

function powerText(p) { return h('span', { class: p === 'on' ? 'state-on' : 'state-off' }, p === 'on' ? '● on' : '○ off'); }
function overrideText(b) { return !b || b.mode === 'disabled' ? 'normal order' : `${b.mode} → ${b.target || '?'}`; }
function mediaText(m) {
  const inserted = (m || []).filter((x) => x.image);
  return inserted.length ? inserted.map((x) => h('span', { class: 'chip' }, `CD${x.slot}: ${x.image}`)) : h('span', { class: 'muted' }, 'empty');
}
function labelsText(l) { return Object.entries(l || {}).map(([k, v]) => h('span', { class: 'chip' }, `${k}=${v}`)); }

function unavailable(e) {
  const explained = explain(e);
  if (e.status === 503) explained.todo = 'Start the daemon with its VM store (vmedia serve --vms …) to manage systems here.';
  if (e.status === 404 && /no such resource/.test(explained.what)) explained.todo = 'This daemon has no systems API: update vmedia.';
  return errorBox(explained);
}

export async function systemsPage() {
  const selector = h('input', { id: 'systems-selector', placeholder: 'rack=a,role=web' });
  const results = h('div', {}, spinner());
  async function load() {
    fill(results, spinner());
    const params = new URLSearchParams();
    if (selector.value.trim()) params.set('label', selector.value.trim());
    try {
      const systems = await all(`/api/v1/systems?${params}`);
      fill(results, systems.length ? table(`${systems.length} system${systems.length === 1 ? '' : 's'}`,
        ['System', 'Power', 'Labels', 'Boot override', 'Media', 'Attached image'],
        systems.map((s) => [h('a', { href: `#/systems/${enc(s.id)}` }, s.id), powerText(s.power), labelsText(s.labels), overrideText(s.boot_override),
          mediaText(s.media), s.attachment ? `${s.attachment.item} v${s.attachment.version}` : '–']))
        : h('p', {}, 'No system matches. Register VMs with vmedia vm create or POST /api/v1/systems.'));
    } catch (e) { fill(results, unavailable(e)); }
  }
  load();
  return h('div', {}, h('h1', {}, 'Systems'),
    h('form', { class: 'row panel', onsubmit: (e) => { e.preventDefault(); load(); } },
      h('div', {}, h('label', { for: 'systems-selector' }, 'Label selector'), selector), h('button', { type: 'submit' }, 'Filter'),
      h('a', { class: 'button ghost', href: '#/batch' }, 'Batch attach')),
    h('div', { class: 'panel' }, results));
}

export async function systemPage(id) {
  const root = h('div', {});
  const consoleBox = h('pre', { class: 'console-log', id: 'serial-console', tabindex: 0, 'aria-label': `Serial console of ${id}` });
  const consoleState = h('p', { class: 'muted', 'aria-live': 'polite' }, 'Connecting to the serial console…');
  let source = null;
  function follow() {
    if (source) source.close();
    source = new EventSource(`/api/v1/systems/${enc(id)}/console`);
    source.addEventListener('console', (m) => {
      const chunk = JSON.parse(m.data);
      consoleBox.append(document.createTextNode(chunk.text));
      consoleBox.scrollTop = consoleBox.scrollHeight;
      consoleState.textContent = `Following live: ${consoleBox.textContent.length} characters.`;
    });
    source.addEventListener('open', () => { consoleState.textContent = 'Following live.'; });
    source.addEventListener('error', () => { consoleState.textContent = 'The console stream paused (the VM may be off); it reconnects by itself.'; });
  }
  onLeave(() => { if (source) source.close(); });

  async function act(label, path, body, method = 'POST') {
    try {
      await api(path, { method, body });
      toast(`${label}: done.`);
    } catch (e) {
      const { what, todo } = explain(e);
      toast(`${label} failed: ${what}. ${todo}`);
    }
    await load();
  }

  async function load() {
    const s = await api(`/api/v1/systems/${enc(id)}`);
    const [boot, usage] = await Promise.all([
      api(`/api/v1/systems/${enc(id)}/boot`).catch(() => null),
      api(`/api/v1/systems/${enc(id)}/usage`).catch(() => null)]);
    const change = session.who.may_change;
    const image = h('input', { id: 'media-image', placeholder: 'item or item@version' });
    const url = h('input', { id: 'media-url', placeholder: 'https://host/image.iso' });
    const controls = change ? h('div', { class: 'panel' }, h('h2', {}, 'Actions'),
      h('div', { class: 'row' },
        h('button', { type: 'button', id: 'power-start', onclick: () => act('Power on', `/api/v1/systems/${enc(id)}/actions/start`) }, 'Power on'),
        h('button', { type: 'button', class: 'ghost', onclick: () => act('Shut down', `/api/v1/systems/${enc(id)}/actions/stop`, { mode: 'graceful' }) }, 'Shut down'),
        h('button', { type: 'button', class: 'danger', onclick: async () => {
          if (await confirm(`Force off ${id}?`, h('p', {}, 'The VM stops at once, like pulling the plug: unsaved data in it is lost.'), 'Force off', true)) act('Force off', `/api/v1/systems/${enc(id)}/actions/stop`, { mode: 'force' });
        } }, 'Force off'),
        h('button', { type: 'button', class: 'ghost', onclick: () => act('Reset', `/api/v1/systems/${enc(id)}/actions/reset`) }, 'Reset')),
      h('div', { class: 'row' }, ['cd', 'hdd', 'pxe'].map((t) => h('button', { type: 'button', class: 'ghost', id: `boot-once-${t}`,
        onclick: () => act(`Boot once from ${t}`, `/api/v1/systems/${enc(id)}`, { boot_override: { mode: 'once', target: t } }, 'PATCH') },
      `Boot once from ${{ cd: 'CD', hdd: 'disk', pxe: 'network' }[t]}`)),
      h('button', { type: 'button', class: 'ghost', onclick: () => act('Normal boot order', `/api/v1/systems/${enc(id)}`, { boot_override: { mode: 'disabled', target: null } }, 'PATCH') }, 'Normal order')),
      h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); if (image.value.trim()) act('Insert', `/api/v1/systems/${enc(id)}/media`, { image: image.value.trim() }); } },
        h('div', {}, h('label', { for: 'media-image' }, 'Insert from the library'), image), h('button', { type: 'submit', id: 'media-insert' }, 'Insert')),
      h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); if (url.value.trim()) act('Insert', `/api/v1/systems/${enc(id)}/media`, { url: url.value.trim() }); } },
        h('div', {}, h('label', { for: 'media-url' }, 'Insert from a URL'), url), h('button', { type: 'submit' }, 'Insert URL')),
      h('button', { type: 'button', class: 'ghost', onclick: () => act('Eject', `/api/v1/systems/${enc(id)}/media`, undefined, 'DELETE') }, 'Eject'))
      : h('p', { class: 'muted' }, `${session.who.name} is readonly: power, boot and media actions are not offered.`);
    fill(root,
      h('p', {}, h('a', { href: '#/systems' }, '← Systems')),
      h('h1', {}, id),
      h('div', { class: 'split' },
        h('div', { class: 'panel' }, h('dl', { class: 'kv', id: 'system-facts' },
          h('dt', {}, 'Power'), h('dd', { id: 'system-power' }, powerText(s.power)),
          h('dt', {}, 'Boot override'), h('dd', { id: 'system-override' }, overrideText(s.boot_override)),
          h('dt', {}, 'Media'), h('dd', { id: 'system-media' }, mediaText(s.media)),
          h('dt', {}, 'Firmware'), h('dd', {}, `${s.firmware}, ${s.cpus} CPU, ${s.memory_mib} MiB`),
          h('dt', {}, 'Disks'), h('dd', {}, (s.disks || []).join(', ') || '–'),
          h('dt', {}, 'Labels'), h('dd', {}, labelsText(s.labels)))),
        h('div', { class: 'panel' }, h('h2', {}, 'Uses'),
          usage ? h('dl', { class: 'kv', id: 'system-usage' },
            h('dt', {}, 'Attached'), h('dd', {}, usage.attachment ? [h('a', { href: `#/library/${enc(usage.attachment.item)}` }, usage.attachment.item), ` v${usage.attachment.version} (${bytes(usage.attachment.size)}), since `, time(usage.attachment.attached), ` by ${usage.attachment.by}`] : '–'),
            h('dt', {}, 'Clones'), h('dd', {}, (usage.clones || []).join(', ') || '–'),
            h('dt', {}, 'Disks'), h('dd', {}, (usage.disks || []).join(', ') || '–')) : h('p', { class: 'muted' }, 'Not available.'))),
      controls,
      h('div', { class: 'panel' }, h('h2', {}, 'Last boot'),
        boot && boot.events.length ? table(boot.started ? null : 'Not started since the daemon began recording', ['Time', 'Event', 'Detail'],
          boot.events.map((e) => [time(e.time), e.event, e.detail || ''])) : h('p', { class: 'muted' }, 'No boot recorded.'),
        boot && boot.console && boot.console.phases.length ? h('p', {}, 'Console phases: ', boot.console.phases.map((p) => h('span', { class: 'chip' }, `${p.phase} @ ${p.offset}`))) : null),
      h('div', { class: 'panel' }, h('h2', {}, 'Serial console'), consoleState, consoleBox));
  }
  try { await load(); } catch (e) { return h('div', {}, h('h1', {}, id), unavailable(e)); }
  follow();
  return root;
}

export async function batchPage() {
  if (!session.who.may_change) {
    return h('div', {}, h('h1', {}, 'Batch attach'), errorBox({ what: `${session.who.name} is readonly: attaching media changes systems.`, todo: 'Ask an administrator for an operator role if you need it.' }));
  }
  let items = [];
  try { items = await all('/api/v1/library/items'); } catch (e) { return h('div', {}, h('h1', {}, 'Batch attach'), errorBox(explain(e))); }
  const image = h('select', { id: 'batch-image' }, items.filter((i) => i.current).map((i) => h('option', { value: i.name }, `${i.name} (v${i.current})`)));
  const version = h('input', { id: 'batch-version', placeholder: 'current', size: 8 });
  const selector = h('input', { id: 'batch-selector', placeholder: 'rack=a,role=web' });
  const list = h('input', { id: 'batch-list', placeholder: 'vm1, vm2, …' });
  const matched = h('p', { id: 'batch-matched', 'aria-live': 'polite' });
  const progress = h('progress', { id: 'batch-progress', max: 1, value: 0, hidden: true, 'aria-label': 'Attach progress' });
  const results = h('div', { id: 'batch-results', 'aria-live': 'polite' });
  const spec = () => (version.value.trim() ? `${image.value}@${version.value.trim()}` : image.value);
  const target = () => (list.value.trim()
    ? { systems: list.value.split(/[\s,]+/).filter(Boolean) }
    : { selector: selector.value.trim() });
  async function count() {
    fill(matched, spinner('Counting…'));
    try {
      const t = target();
      if (t.systems) { fill(matched, `${t.systems.length} systems listed.`); return t.systems.length; }
      if (!t.selector) { fill(matched, 'Give a label selector or a list of systems.'); return 0; }
      const systems = await all(`/api/v1/systems?label=${enc(t.selector)}`);
      fill(matched, `${systems.length} system${systems.length === 1 ? '' : 's'} match ${t.selector}.`);
      return systems.length;
    } catch (e) { fill(matched, unavailable(e)); return 0; }
  }
  async function attach() {
    const n = await count();
    if (!n) return;
    if (!await confirm('Attach?', h('p', {}, `${spec()} goes into CD slot 0 of ${n} systems, replacing what is there.`), `Attach to ${n}`)) return;
    progress.hidden = false;
    try {
      let task = await api('/api/v1/attachments', { method: 'POST', body: { image: spec(), ...target() } });
      for (;;) {
        const r = task.result;
        if (r) {
          progress.max = r.total; progress.value = r.succeeded + r.failed;
          fill(results, h('p', { id: 'batch-summary' }, `${r.succeeded} attached, ${r.failed} failed of ${r.total}${task.state === 'running' ? ' so far…' : '.'}`),
            table(null, ['System', 'Result', ['ms', 'num']], r.results.map((x) => [h('a', { href: `#/systems/${enc(x.system)}` }, x.system),
              x.ok ? h('span', { class: 'ok' }, 'attached') : h('span', {}, x.error || 'failed'), x.ms != null ? x.ms.toFixed(1) : '']),
            (i) => ({ class: 'batch-row', dataset: { ok: String(r.results[i].ok) } })));
        }
        if (task.state !== 'running') break;
        await new Promise((res) => setTimeout(res, POLL_MS));
        task = await api(`/api/v1/tasks/${enc(task.id)}`);
      }
      if (task.state === 'failed') fill(results, errorBox({ what: (task.error && task.error.detail) || 'the attach failed', todo: 'Check the image and the systems and try again.' }));
    } catch (e) { fill(results, unavailable(e)); }
  }
  return h('div', {}, h('h1', {}, 'Batch attach'),
    h('form', { class: 'panel', onsubmit: (e) => { e.preventDefault(); attach(); } },
      h('div', { class: 'row' },
        h('div', {}, h('label', { for: 'batch-image' }, 'Image'), image),
        h('div', {}, h('label', { for: 'batch-version' }, 'Version'), version),
        h('div', {}, h('label', { for: 'batch-selector' }, 'Label selector'), selector),
        h('div', {}, h('label', { for: 'batch-list' }, 'or systems'), list)),
      h('div', { class: 'row' },
        h('button', { type: 'button', class: 'ghost', id: 'batch-count', onclick: count }, 'How many match?'),
        h('button', { type: 'submit', id: 'batch-attach' }, 'Attach')),
      matched, progress),
    h('div', { class: 'panel' }, results));
}
