// Live I/O: the server-sent events of GET /api/v1/stats/stream (the numbers of /metrics and
// `vmedia top`), as charts of the daemon's totals and a table per image and per client with
// a sparkline each, updated every second.

import { h, fill, rate, seconds, percent, table, spinner } from './ui.js';
import { LiveChart, spark, WINDOW } from './chart.js';
import { onLeave } from './app.js';

function fmt(n) { return n === null || n === undefined ? '–' : Number(n).toFixed(n < 10 ? 1 : 0); }

export async function livePage() {
  const charts = {
    iops: new LiveChart('chart-iops', 'Operations per second', fmt),
    throughput: new LiveChart('chart-throughput', 'Throughput (read, write)', rate, ['read', 'write']),
    queue: new LiveChart('chart-queue', 'Queue depth', fmt),
    latency: new LiveChart('chart-latency', 'Latency (mean, p99)', seconds, ['mean', 'p99']),
    hits: new LiveChart('chart-hits', 'Cache hit rate', percent),
  };
  const rows = h('div', { id: 'live-rows' }, spinner('Waiting for the first second of numbers…'));
  const state = h('p', { class: 'muted', id: 'live-state', 'aria-live': 'polite' }, 'Connecting…');
  const history = new Map();
  const source = new EventSource('/api/v1/stats/stream');
  onLeave(() => source.close());
  source.addEventListener('open', () => { state.textContent = 'Connected: one update a second.'; });
  source.addEventListener('error', () => {
    state.textContent = 'The live stream was interrupted; reconnecting. If this lasts, check that vmedia serve is running and log in again.';
  });
  source.addEventListener('stats', (message) => {
    const s = JSON.parse(message.data);
    const t = s.totals;
    const all = s.exports.flatMap((e) => [e, ...e.clients]);
    const withLatency = all.filter((r) => r.mean_latency_seconds !== null && r.mean_latency_seconds !== undefined && !r.client);
    const mean = withLatency.length ? Math.max(...withLatency.map((r) => r.mean_latency_seconds)) : null;
    const p99 = withLatency.length ? Math.max(...withLatency.map((r) => r.p99_latency_seconds ?? 0)) : null;
    charts.iops.push(t.iops);
    charts.throughput.push(t.read_bytes_per_second, t.write_bytes_per_second);
    charts.queue.push(t.queue_depth);
    charts.latency.push(mean, p99);
    charts.hits.push(t.cache_hit_rate);
    state.textContent = `Updated ${new Date(s.time).toLocaleTimeString()} (every ${s.interval_seconds.toFixed(1)} s).`;
    const lines = [];
    for (const e of s.exports) {
      for (const r of [e, ...e.clients]) {
        const key = `${r.export}|${r.client || ''}`;
        const past = history.get(key) || [];
        past.push(r.iops);
        if (past.length > WINDOW) past.shift();
        history.set(key, past);
        lines.push([r.client ? `  ↳ ${r.client}` : r.export, fmt(r.queue_depth), fmt(r.iops), spark(past, `operations per second of ${key}`),
          rate(r.read_bytes_per_second), rate(r.write_bytes_per_second), seconds(r.mean_latency_seconds), seconds(r.p99_latency_seconds), percent(r.cache_hit_rate)]);
      }
    }
    fill(rows, lines.length ? table('Per image and per client (the rows of vmedia top)',
      ['Image / client', ['Queue', 'num'], ['IOPS', 'num'], 'Last minute', ['Read', 'num'], ['Write', 'num'], ['Mean', 'num'], ['p99', 'num'], ['Cache hits', 'num']], lines)
      : h('p', {}, 'No image is being read right now. Start a VM or read an image and its line appears here.'));
  });
  return h('div', {}, h('h1', {}, 'Live I/O'), state,
    h('div', { class: 'charts' }, Object.values(charts).map((c) => c.el)),
    h('div', { class: 'panel' }, rows));
}
