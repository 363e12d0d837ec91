// Small SVG line charts for the live view: a fixed window of the last samples, redrawn on
// every event. One or two series per chart (e.g. mean and p99 latency).

import { h, fill } from './ui.js';

/** Samples kept per series: one a second, a minute of history. */
export const WINDOW = 60;

function points(values, width, height, max) {
  const step = width / (WINDOW - 1);
  const offset = WINDOW - values.length;
  return values.map((v, i) => `${((offset + i) * step).toFixed(1)},${(height - 2 - ((v || 0) / max) * (height - 4)).toFixed(1)}`).join(' ');
}

/** A chart with a title, the latest value in words, and the line(s). */
export class LiveChart {
  constructor(id, title, format, seriesNames = ['value']) {
    this.format = format;
    this.series = seriesNames.map(() => []);
    this.names = seriesNames;
    this.valueEl = h('div', { class: 'value', id: `${id}-value` }, '–');
    this.svgBox = h('div', {});
    this.el = h('figure', { class: 'chart', id, 'aria-labelledby': `${id}-title` },
      h('h3', { id: `${id}-title` }, title), this.valueEl, this.svgBox);
    this.draw();
  }

  push(...values) {
    values.forEach((v, i) => {
      this.series[i].push(v === null || v === undefined ? null : Number(v));
      if (this.series[i].length > WINDOW) this.series[i].shift();
    });
    this.draw();
  }

  draw() {
    const W = 200; const H = 48;
    const max = Math.max(1e-12, ...this.series.flat().filter((v) => v !== null));
    const svg = h('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img',
      'aria-label': `${this.names.join(' and ')}, last ${WINDOW} seconds` },
    h('line', { x1: 0, x2: W, y1: H - 1, y2: H - 1 }),
    this.series.map((s, i) => h('polyline', { class: i ? 'second' : null, points: points(s, W, H, max), dataset: { samples: s.length } })));
    fill(this.svgBox, svg);
    const last = this.series.map((s) => s[s.length - 1]);
    this.valueEl.textContent = last.map((v, i) => (this.names.length > 1 ? `${this.names[i]} ` : '') + this.format(v)).join(' · ');
    this.el.dataset.last = String(last[0] ?? '');
  }
}

/** A small inline sparkline for table rows. */
export function spark(values, label) {
  const W = 120; const H = 24;
  const max = Math.max(1e-12, ...values.filter((v) => v !== null));
  return h('span', { class: 'spark' }, h('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label },
    h('polyline', { points: points(values, W, H, max) })));
}
