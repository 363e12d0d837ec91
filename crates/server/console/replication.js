// Replication: every peer from both sources, the library's own peer records
// (GET /api/v1/library/sync-status: what any `library sync` to or from this library left) and
// the daemon's continuous replication (GET /api/v1/replication: --replicate-to/--mirror-from),
// joined by location; then each item's dual-active state against each peer the daemon can read.

import { api, explain } from './api.js';
import { h, time, bytes, table, errorBox } from './ui.js';

function lag(s) {
  if (s === null || s === undefined) return h('span', { class: 'muted', title: 'unknown for receiving peers, before the first run, or without the library key' }, 'unknown');
  if (s === 0) return h('span', { class: 'ok' }, 'current');
  if (s < 120) return `${s} s behind`;
  if (s < 7200) return `${Math.round(s / 60)} min behind`;
  return `${(s / 3600).toFixed(1)} h behind`;
}

const DIRECTION = { to: 'sends to', from: 'receives from', push: 'sends to', pull: 'receives from' };

/** One row per peer: a library record and the daemon's peer of the same location together. */
function joinPeers(status, daemon) {
  const rows = status.peers.map((record) => ({ record, daemon: null }));
  for (const peer of daemon.peers) {
    const wanted = peer.direction === 'push' ? 'to' : 'from';
    const row = rows.find((r) => !r.daemon && r.record.peer_location === peer.peer && r.record.direction === wanted);
    if (row) row.daemon = peer;
    else rows.push({ record: null, daemon: peer });
  }
  return rows;
}

function source(row, interval) {
  const parts = [];
  if (row.daemon) parts.push(h('span', { class: 'chip', title: `vmedia serve syncs this peer every ${interval} s` }, 'daemon'));
  if (row.record) parts.push(h('span', { class: 'chip', title: 'the peer record in the library (sync/), written by every sync' }, 'library record'));
  return parts;
}

function lastError(row) {
  const error = row.daemon?.last_error ?? row.record?.last_error;
  if (!error) return h('span', { class: 'ok' }, 'none');
  const todo = row.daemon ? 'The daemon retries by itself; check that the peer is reachable and its credentials valid.'
    : 'Run vmedia library sync again once the peer is reachable.';
  return h('span', {}, h('span', { class: 'error-text' }, error), h('br'), h('span', { class: 'muted' }, todo));
}

function pending(row) {
  const r = row.record;
  const d = row.daemon;
  const bytesLeft = d ? d.pending_bytes : r.pending_bytes;
  const chunks = d ? d.pending_chunks : r.pending_chunks;
  const events = r && r.pending_events != null ? `, ${r.pending_events} events` : '';
  return `${bytes(bytesLeft)} (${chunks} chunks${events})`;
}

const STATE_TEXT = {
  agree: 'agree',
  ahead: 'ahead: the peer has not received changes made here',
  behind: 'behind: changes made at the peer have not arrived here',
  diverged: 'diverged: changed on both sides; the latest change will decide',
};

function digestCell(version, digest) {
  if (!digest) return h('span', { class: 'muted' }, 'none (absent or removed)');
  return h('span', { title: digest }, `v${version}, `, h('span', { class: 'mono' }, `${digest.slice(0, 15)}…`));
}

function decided(item) {
  const d = item.decided_by;
  if (!d) return '–';
  const who = d.side === 'here' ? 'this site' : d.side === 'peer' ? 'the peer' : `site ${d.site.slice(0, 8)}`;
  return h('span', { title: `site ${d.site}` }, `${who}: ${d.kind} at `, time(d.time));
}

/** The dual-active state of each item against one peer. */
function itemsPanel(row, index) {
  const r = row.record;
  const title = `Items against ${r.peer_location}`;
  if (r.items_error) return h('div', { class: 'panel' }, h('h2', {}, title), errorBox({ what: r.items_error, todo: ' The daemon reads a peer with the credentials of its own --replicate-to/--mirror-from; other peers only when they are folders it can open.' }));
  if (!r.items) return null;
  const counts = {};
  for (const item of r.items) counts[item.state] = (counts[item.state] || 0) + 1;
  return h('div', { class: 'panel', id: `items-${index}` }, h('h2', {}, title),
    h('p', { class: 'muted' }, 'Per item: whether both sites show the same current version, the versions still to travel each way, and the event that decides the current version once both have merged (the latest change wins; equal times go to the larger site id).'),
    h('p', {}, Object.entries(counts).map(([state, n]) => h('span', { class: 'chip' }, `${n} ${state}`))),
    table(null, ['Item', 'State', 'Current here', 'Current at the peer', 'Same', ['To send', 'num'], ['To receive', 'num'], 'Decided by'],
      r.items.map((item) => [item.name,
        h('span', { class: item.state === 'agree' ? 'ok' : item.state === 'diverged' ? 'error-text' : null, title: STATE_TEXT[item.state] }, item.state),
        digestCell(item.here_version, item.here_digest), digestCell(item.peer_version, item.peer_digest),
        item.same_current ? h('span', { class: 'ok' }, 'yes') : 'no',
        `${item.versions_to_send} versions`, `${item.versions_to_receive} versions`, decided(item)]),
      (i) => ({ dataset: { item: r.items[i].name, state: r.items[i].state } })));
}

export async function replicationPage() {
  const [status, daemon] = await Promise.all([
    api('/api/v1/library/sync-status'),
    // The daemon's own peers; a daemon that replicates nothing answers an empty list.
    api('/api/v1/replication').catch((e) => ({ interval_seconds: 0, peers: [], error: explain(e) })),
  ]);
  const rows = joinPeers(status, daemon);
  return h('div', {}, h('h1', {}, 'Replication'),
    h('p', {}, 'Library ', h('code', {}, status.location), status.site ? [', site ', h('code', {}, status.site)] : ' (never synced: no site id yet)', '.',
      daemon.peers.length ? ` The daemon syncs ${daemon.peers.length} peer${daemon.peers.length === 1 ? '' : 's'} every ${daemon.interval_seconds} s.` : ' The daemon runs no continuous replication.'),
    daemon.error ? errorBox(daemon.error) : null,
    h('div', { class: 'panel', id: 'peers' }, rows.length
      ? table(`${rows.length} peer${rows.length === 1 ? '' : 's'}`,
        ['Peer', 'Source', 'Direction', 'Lag', ['Pending', 'num'], 'Last success', 'Last attempt', 'Last error'],
        rows.map((row) => {
          const r = row.record;
          const d = row.daemon;
          return [h('span', {}, r ? r.peer_site : h('span', { class: 'muted' }, 'site not known yet'), h('br'), h('span', { class: 'muted mono' }, r ? r.peer_location : d.peer)),
            source(row, daemon.interval_seconds),
            DIRECTION[r ? r.direction : d.direction],
            lag(r && r.lag_seconds != null ? r.lag_seconds : d?.lag_seconds),
            pending(row),
            time(d?.last_success ?? r?.last_success), time(d?.last_attempt ?? r?.last_attempt),
            lastError(row)];
        }),
        (i) => ({ dataset: { location: rows[i].record ? rows[i].record.peer_location : rows[i].daemon.peer } }))
      : h('p', {}, 'This library has no replication peer. Start one with vmedia library sync --from THIS --to LOCATION, or vmedia serve --replicate-to LOCATION.')),
    rows.filter((row) => row.record).map((row, i) => itemsPanel(row, i)));
}
