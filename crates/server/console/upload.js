// Upload through the resumable upload API: POST /api/v1/uploads, PATCH pieces with
// Upload-Offset, POST .../complete (a task that adds the bytes like `library add`). The upload
// id is kept in localStorage, so after a page reload choosing the same file resumes at the
// offset the daemon reports (HEAD) instead of starting over.

import { api, explain } from './api.js';
import { h, fill, bytes, errorBox, toast } from './ui.js';

/** Bytes per PATCH: large enough for throughput, small enough that a lost piece costs little. */
const PIECE = 4 << 20;
const KEY = 'vmedia.upload';
/** How often a running add task is polled. */
const POLL_MS = 500;

function saved() {
  try { return JSON.parse(localStorage.getItem(KEY) || 'null'); } catch (_) { return null; }
}

/** A panel to upload a file as a new version of `item` (or of a name typed in). */
export function uploadPanel(item, onDone) {
  const nameInput = h('input', { id: 'upload-item', value: item || '', placeholder: 'item name', required: true });
  const file = h('input', { id: 'upload-file', type: 'file', 'aria-label': 'Image file to upload', 'aria-describedby': 'upload-hint' });
  const progress = h('progress', { id: 'upload-progress', max: 100, value: 0, hidden: true, 'aria-label': 'Upload progress' });
  const status = h('div', { id: 'upload-status', 'aria-live': 'polite' });
  const drop = h('div', { class: 'drop', id: 'upload-drop' },
    h('p', { id: 'upload-hint' }, 'Drop an ISO or disk image here, or choose a file:'), file);
  const resume = saved();
  if (resume) {
    fill(status, h('p', {}, `An upload of “${resume.file}” (${bytes(resume.size)}) to ${resume.item} was interrupted. Choose the same file to resume it, or `,
      h('button', { type: 'button', class: 'ghost', onclick: abandon }, 'abandon it'), '.'));
    if (!item) nameInput.value = resume.item;
  }
  async function abandon() {
    const s = saved();
    localStorage.removeItem(KEY);
    if (s) { try { await api(`/api/v1/uploads/${encodeURIComponent(s.id)}`, { method: 'DELETE' }); } catch (_) { /* gone already */ } }
    fill(status, h('p', {}, 'Abandoned.'));
  }
  async function send(f) {
    const name = nameInput.value.trim() || f.name.replace(/\.[^.]*$/, '').replace(/[^A-Za-z0-9._-]/g, '-');
    nameInput.value = name;
    progress.hidden = false;
    progress.value = 0;
    let s = saved();
    let offset = 0;
    try {
      if (s && s.item === name && s.file === f.name && s.size === f.size && s.modified === f.lastModified) {
        const head = await api(`/api/v1/uploads/${encodeURIComponent(s.id)}`, { method: 'HEAD', raw: true });
        offset = Number(head.headers.get('Upload-Offset') || 0);
        fill(status, h('p', {}, `Resuming at ${bytes(offset)}.`));
      } else {
        const created = await api('/api/v1/uploads', { method: 'POST', body: { item: name, length: f.size, note: `uploaded from the console: ${f.name}` } });
        s = { id: created.id, item: name, file: f.name, size: f.size, modified: f.lastModified };
        localStorage.setItem(KEY, JSON.stringify(s));
      }
      while (offset < f.size) {
        const piece = f.slice(offset, Math.min(f.size, offset + PIECE));
        const answer = await api(`/api/v1/uploads/${encodeURIComponent(s.id)}`, {
          method: 'PATCH', body: piece, raw: true,
          headers: { 'Upload-Offset': String(offset), 'Content-Type': 'application/offset+octet-stream' },
        });
        offset = Number(answer.headers.get('Upload-Offset') || offset + piece.size);
        progress.value = Math.floor((offset / f.size) * 100);
        fill(status, h('p', {}, `${bytes(offset)} of ${bytes(f.size)} sent.`));
      }
      fill(status, h('p', {}, h('span', { class: 'spinner', 'aria-hidden': 'true' }), ' Adding to the library (deduplicating)…'));
      let task = await api(`/api/v1/uploads/${encodeURIComponent(s.id)}/complete`, { method: 'POST' });
      while (task.state === 'running') {
        await new Promise((r) => setTimeout(r, POLL_MS));
        task = await api(`/api/v1/tasks/${encodeURIComponent(task.id)}`);
      }
      localStorage.removeItem(KEY);
      if (task.state !== 'succeeded') {
        throw new Error((task.error && task.error.detail) || `the add ended ${task.state}`);
      }
      const r = task.result || {};
      progress.value = 100;
      fill(status, h('p', { class: 'ok', id: 'upload-done' }, `Added ${r.name} version ${r.version}: ${bytes(r.size)}, ${bytes(r.new_bytes)} new and ${bytes(r.reused_bytes)} shared with versions already stored.`));
      toast(`${r.name} version ${r.version} added.`);
      if (onDone) onDone();
    } catch (e) {
      fill(status, errorBox(explain(e)), h('p', {}, 'The bytes sent so far are kept: choose the same file again to resume.'));
    }
  }
  file.addEventListener('change', () => { if (file.files[0]) send(file.files[0]); });
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]);
  });
  return h('div', { class: 'panel' }, h('h2', {}, item ? `Upload a new version of ${item}` : 'Upload an image'),
    h('div', { class: 'row' }, h('div', {}, h('label', { for: 'upload-item' }, 'Item'), nameInput)), drop, progress, status);
}
