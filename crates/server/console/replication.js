// Replication: GET /api/v1/library/sync-status, the library's own sync-status report: each
// peer with its direction, lag, pending bytes and last error.

import { api } from './api.js';
import { h, time, bytes, table } from './ui.js';

function lag(s) {
  if (s === null || s === undefined) return h('span', { class: 'muted', title: 'unknown for receiving peers, or without the library key' }, 'unknown');
  if (s === 0) return h('span', { class: 'ok' }, 'current');
  if (s < 120) return `${s} s behind`;
  if (s < 7200) return `${Math.round(s / 60)} min behind`;
  return `${(s / 3600).toFixed(1)} h behind`;
}

export async function replicationPage() {
  const report = await api('/api/v1/library/sync-status');
  return h('div', {}, h('h1', {}, 'Replication'),
    h('p', {}, 'Library ', h('code', {}, report.location), report.site ? [', site ', h('code', {}, report.site)] : ' (never synced: no site id yet)', '.'),
    h('div', { class: 'panel' }, report.peers.length
      ? table(`${report.peers.length} peer${report.peers.length === 1 ? '' : 's'}`,
        ['Peer', 'Direction', 'Lag', ['Pending', 'num'], 'Last success', 'Last attempt', 'Last error'],
        report.peers.map((p) => [h('span', {}, p.peer_site, h('br'), h('span', { class: 'muted mono' }, p.peer_location)),
          p.direction === 'to' ? 'sends to' : 'receives from', lag(p.lag_seconds),
          `${bytes(p.pending_bytes)}${p.pending_events != null ? `, ${p.pending_events} events` : ''}`,
          time(p.last_success), time(p.last_attempt),
          p.last_error ? h('span', { class: 'error-text' }, p.last_error, h('br'), h('span', { class: 'muted' }, 'Run vmedia library sync again once the peer is reachable.')) : h('span', { class: 'ok' }, 'none')]))
      : h('p', {}, 'This library has no replication peer. Start one with vmedia library sync --from THIS --to LOCATION.')));
}
