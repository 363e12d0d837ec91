// Small DOM helpers: element building (text only, never HTML strings), times in the
// viewer's zone with UTC in the title, sizes, spinners and error boxes.

/** `h('a', {href}, 'text', child)`: attributes starting with `on` become listeners. */
export function h(tag, attrs = {}, ...children) {
  const svg = ['svg', 'g', 'line', 'circle', 'rect', 'text', 'polyline', 'path', 'title'].includes(tag);
  const el = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const local = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

/** A `<time>` showing `iso` in the viewer's zone, UTC on hover. */
export function time(iso) {
  if (!iso) return h('span', { class: 'muted' }, '–');
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return h('span', {}, iso);
  return h('time', { datetime: date.toISOString(), title: `${date.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z')} UTC` },
    local.format(date));
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
export function bytes(n) {
  if (n === null || n === undefined) return '–';
  let value = Number(n);
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < UNITS.length - 1) { value /= 1024; unit += 1; }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${UNITS[unit]}`;
}

export function rate(n) { return `${bytes(n)}/s`; }

export function seconds(s) {
  if (s === null || s === undefined) return '–';
  if (s < 1e-3) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1e3).toFixed(1)} ms`;
  return `${s.toFixed(2)} s`;
}

export function percent(x) { return x === null || x === undefined ? '–' : `${(x * 100).toFixed(1)} %`; }

export function spinner(text = 'Loading…') {
  return h('div', { class: 'loading', role: 'status' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), text);
}

/** An error box: what went wrong, and what to do. */
export function errorBox(explained) {
  return h('div', { class: 'error', role: 'alert' }, h('strong', {}, explained.what), explained.todo);
}

/** Replaces `el`'s children. */
export function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

/** Asks for confirmation in the page's dialog; resolves true or false. */
export function confirm(title, body, okLabel = 'Confirm', danger = false) {
  const dialog = document.getElementById('confirm');
  fill(document.getElementById('confirm-title'), title);
  fill(document.getElementById('confirm-body'), body);
  const ok = document.getElementById('confirm-ok');
  ok.textContent = okLabel;
  ok.className = danger ? 'danger' : '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.returnValue = 'cancel';
    dialog.showModal();
    document.getElementById('confirm-cancel').focus();
  });
}

let toastTimer;
export function toast(text) {
  const el = document.getElementById('toast');
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 6000);
}

/** A table from headers and rows of cells; `num` headers are right-aligned. */
export function table(caption, headers, rows, rowAttrs = () => ({})) {
  return h('div', { class: 'table-wrap' }, h('table', {},
    caption ? h('caption', { class: 'muted' }, caption) : null,
    h('thead', {}, h('tr', {}, headers.map((hd) => {
      const [label, cls] = Array.isArray(hd) ? hd : [hd, ''];
      return h('th', { scope: 'col', class: cls || null }, label);
    }))),
    h('tbody', {}, rows.map((cells, i) => h('tr', rowAttrs(i), cells.map((c, j) => {
      const hd = headers[j];
      return h('td', { class: Array.isArray(hd) ? hd[1] : null }, c);
    }))))));
}
