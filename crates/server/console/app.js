// The console's shell: login and logout, the page router (#/page/...), the theme, the
// "working" indicator, and who is logged in (readonly users get no controls that change).

import { api, explain, onPending } from './api.js';
import { h, fill, errorBox, spinner } from './ui.js';
import { libraryPage, itemPage, prunePage } from './library.js';
import { livePage } from './live.js';
import { auditPage } from './audit.js';
import { replicationPage } from './replication.js';
import { systemsPage, systemPage, batchPage } from './systems.js';

const SESSION_KEY = 'vmedia.session';
const THEME_KEY = 'vmedia.theme';

/** Who is logged in: `{name, role, may_change, may_administer}`, or null. */
export const session = { who: null };

/** Set by pages that hold a live connection (SSE, timers); called when the page changes. */
let leave = null;
export function onLeave(fn) { leave = fn; }

const pages = {
  library: (args) => (args.length ? itemPage(decodeURIComponent(args.join('/'))) : libraryPage()),
  prune: () => prunePage(),
  live: () => livePage(),
  audit: () => auditPage(),
  replication: () => replicationPage(),
  systems: (args) => (args.length ? systemPage(decodeURIComponent(args[0])) : systemsPage()),
  batch: () => batchPage(),
};

function theme(next) {
  const current = next || localStorage.getItem(THEME_KEY)
    || (window.matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light');
  document.documentElement.dataset.theme = current;
  localStorage.setItem(THEME_KEY, current);
  document.getElementById('theme').textContent = current === 'dark' ? 'Light theme' : 'Dark theme';
}

function showLogin(message) {
  session.who = null;
  document.getElementById('nav').hidden = true;
  document.getElementById('who').hidden = true;
  document.getElementById('logout').hidden = true;
  fill(document.getElementById('page'));
  document.getElementById('login').hidden = false;
  const error = document.getElementById('login-error');
  error.hidden = !message;
  error.textContent = message || '';
  document.getElementById('login-name').focus();
}

function loggedIn(who) {
  session.who = who;
  document.body.dataset.role = who.role;
  document.getElementById('login').hidden = true;
  document.getElementById('nav').hidden = false;
  const whoEl = document.getElementById('who');
  whoEl.hidden = false;
  whoEl.textContent = `${who.name} (${who.role})`;
  document.getElementById('logout').hidden = false;
  route();
}

async function login(event) {
  event.preventDefault();
  const button = document.getElementById('login-submit');
  const name = document.getElementById('login-name').value.trim();
  const password = document.getElementById('login-password').value;
  if (!name || !password) {
    showLogin('Enter your name and password.');
    return;
  }
  button.disabled = true;
  button.replaceChildren(h('span', { class: 'spinner', 'aria-hidden': 'true' }), ' Logging in…');
  try {
    const opened = await api('/api/v1/sessions', { method: 'POST', body: { name, password } });
    localStorage.setItem(SESSION_KEY, opened.id);
    document.getElementById('login-password').value = '';
    loggedIn(await api('/api/v1/whoami'));
  } catch (e) {
    const { what, todo } = explain(e);
    showLogin(e.status === 401 ? 'Unknown name or wrong password. Check both and try again.' : `${what}. ${todo}`);
  } finally {
    button.disabled = false;
    button.textContent = 'Log in';
  }
}

async function logout() {
  const id = localStorage.getItem(SESSION_KEY);
  localStorage.removeItem(SESSION_KEY);
  if (leave) { leave(); leave = null; }
  try {
    if (id) await api(`/api/v1/sessions/${encodeURIComponent(id)}`, { method: 'DELETE' });
  } catch (_) { /* the session may have ended already */ }
  showLogin('You are logged out.');
}

async function route() {
  if (!session.who) return;
  if (leave) { leave(); leave = null; }
  const [name, ...args] = (location.hash.replace(/^#\/?/, '') || 'library').split('/');
  const page = pages[name] || pages.library;
  for (const link of document.querySelectorAll('nav a')) {
    if (link.dataset.page === name) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const root = document.getElementById('page');
  fill(root, spinner());
  try {
    const content = await page(args);
    fill(root, content);
  } catch (e) {
    fill(root, h('h1', {}, 'This page could not be shown'), errorBox(explain(e)));
  }
  document.title = `${(root.querySelector('h1') || {}).textContent || 'vmedia'} · vmedia console`;
}

function start() {
  theme();
  document.getElementById('theme').addEventListener('click', () => {
    theme(document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark');
  });
  document.getElementById('login-form').addEventListener('submit', login);
  document.getElementById('logout').addEventListener('click', logout);
  window.addEventListener('hashchange', route);
  window.addEventListener('vmedia-logged-out', () => {
    if (session.who) showLogin('Your session ended. Log in again.');
  });
  const busy = document.getElementById('busy');
  onPending((n) => { busy.hidden = n === 0; });
  api('/api/v1/whoami').then(loggedIn, () => showLogin());
}

start();
