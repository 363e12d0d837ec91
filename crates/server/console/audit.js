// The audit log (administrators): every change and every refused attempt, filtered by user,
// item (target) and time through GET /api/v1/audit's own filters.

import { api, explain } from './api.js';
import { h, fill, time, table, spinner, errorBox } from './ui.js';
import { session } from './app.js';

/** Records shown per page. */
const PAGE = 200;

export async function auditPage() {
  if (!session.who.may_administer) {
    return h('div', {}, h('h1', {}, 'Audit log'),
      errorBox({ what: `${session.who.name} is ${session.who.role}: only administrators read the audit log.`, todo: 'Ask an administrator if you need to see who changed what.' }));
  }
  const user = h('input', { id: 'audit-user', placeholder: 'any user' });
  const target = h('input', { id: 'audit-target', placeholder: 'item, path…' });
  const since = h('input', { id: 'audit-since', type: 'datetime-local' });
  const outcome = h('select', { id: 'audit-outcome' }, ['', 'success', 'denied', 'failed'].map((o) => h('option', { value: o }, o || 'any')));
  const results = h('div', {}, spinner());
  let next = null;
  async function load(more = false) {
    const params = new URLSearchParams({ limit: String(PAGE) });
    if (user.value.trim()) params.set('user', user.value.trim());
    if (target.value.trim()) params.set('target', target.value.trim());
    if (since.value) params.set('since', new Date(since.value).toISOString());
    if (outcome.value) params.set('outcome', outcome.value);
    if (!more) fill(results, spinner());
    try {
      const page = await api(more && next ? next : `/api/v1/audit?${params}`);
      next = page.next;
      const rows = page.items.map((r) => [time(r.time), r.user || '–', r.role || '', r.peer, r.action, h('span', { class: 'mono' }, r.target),
        h('span', { class: r.outcome === 'success' ? 'ok' : r.outcome === 'denied' ? 'error-text' : '' }, r.outcome), r.detail || '']);
      fill(results, rows.length ? table(`${rows.length} record${rows.length === 1 ? "" : "s"}, oldest first`, ['Time', 'User', 'Role', 'From', 'Action', 'Target', 'Outcome', 'Detail'], rows)
        : h('p', {}, 'No record matches these filters.'),
      next ? h('button', { type: 'button', class: 'ghost', onclick: () => load(true) }, 'Next page') : null);
    } catch (e) {
      fill(results, errorBox(explain(e)));
    }
  }
  load();
  return h('div', {}, h('h1', {}, 'Audit log'),
    h('form', { class: 'row panel', onsubmit: (e) => { e.preventDefault(); next = null; load(); } },
      h('div', {}, h('label', { for: 'audit-user' }, 'User'), user),
      h('div', {}, h('label', { for: 'audit-target' }, 'Item or target'), target),
      h('div', {}, h('label', { for: 'audit-since' }, 'Since (your time)'), since),
      h('div', {}, h('label', { for: 'audit-outcome' }, 'Outcome'), outcome),
      h('button', { type: 'submit' }, 'Filter')),
    h('div', { class: 'panel' }, results));
}
