// The console shell: hash routes (#/generate ...), the health indicator and the one place where
// an unexpected failure becomes a visible message instead of a blank page.
import { api } from './lib/api.js';
import { errorBox, h, setChildren } from './lib/dom.js';
import * as generate from './pages/generate.js';
import * as compare from './pages/compare.js';
import * as search from './pages/search.js';
import * as experiments from './pages/experiments.js';
import * as server from './pages/server.js';

const PAGES = { generate, compare, search, experiments, server };
const main = document.getElementById('main');
const banner = document.getElementById('banner');
let unmount = null;

function showBanner(err) {
  setChildren(banner, errorBox(err, 'Unexpected error'), h('button', { type: 'button', class: 'link', onclick: () => banner.replaceChildren() }, 'Dismiss'));
}
window.addEventListener('error', (e) => showBanner(e.error ?? e.message));
window.addEventListener('unhandledrejection', (e) => showBanner(e.reason));

function route() {
  const name = (location.hash.match(/^#\/([a-z]+)/)?.[1] ?? 'generate');
  const page = PAGES[name];
  for (const a of document.querySelectorAll('nav a[data-page]')) {
    if (a.dataset.page === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  try {
    unmount?.();
  } catch {
    /* a page's cleanup failing must not block the next page */
  }
  unmount = null;
  if (!page) {
    setChildren(main, h('h1', { id: 'page-title' }, 'Not found'), h('p', { class: 'empty' }, `There is no page "${name}". `, h('a', { href: '#/generate' }, 'Go to Generate'), '.'));
    return;
  }
  document.title = `${page.title} · catskim console`;
  const root = h('section', { class: `page page-${name}`, 'aria-labelledby': 'page-title' });
  setChildren(main, h('h1', { id: 'page-title' }, page.title), root);
  try {
    unmount = page.mount(root) ?? null;
  } catch (e) {
    root.append(errorBox(e, 'This page failed to load'));
  }
}

window.addEventListener('hashchange', () => {
  route();
  main.focus({ preventScroll: true });
});
route();

// health: readiness from GET /v1/status, refreshed every 5 s
const health = document.getElementById('health');
async function refreshHealth() {
  try {
    const { json } = await api('GET', '/v1/status');
    health.className = `health ${json.status}`;
    health.textContent = json.status === 'ready' ? 'ready' : `${json.status.replace('_', ' ')}${json.reason ? `: ${json.reason}` : ''}`;
    health.title = json.reason ?? `version ${json.version}`;
  } catch (e) {
    health.className = 'health down';
    health.textContent = 'unreachable';
    health.title = e.message;
  }
}
refreshHealth();
setInterval(refreshHealth, 5000);
