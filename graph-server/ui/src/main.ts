// The shell: header with navigation and the API token, one view per route (`/`,
// `/outages`, `/traces`, `/traces/<id>`), live refresh, and the prompt after a 401.
import './style.css';
import { ApiError, setToken, token, Unauthorized, type Outage } from './api';
import { el } from './format';
import { OutagesView } from './outages';
import { state, windowCovering } from './state';
import { TopologyView } from './topology';
import { TracesView } from './traces';

type Route = { view: 'topology' } | { view: 'outages' } | { view: 'traces'; traceId: string | null };

function parse(path: string): Route {
  if (path.startsWith('/outages')) return { view: 'outages' };
  const trace = /^\/traces(?:\/([0-9a-fA-F]{32}))?/.exec(path);
  if (trace) return { view: 'traces', traceId: trace[1] ?? null };
  return { view: 'topology' };
}

const banner = el('div', { class: 'banner', hidden: '', role: 'alert', 'data-testid': 'banner' });
const tokenInput = el('input', {
  type: 'password',
  placeholder: 'API token',
  autocomplete: 'off',
  'aria-label': 'API token',
  'data-testid': 'token-input',
});
tokenInput.value = token();

let unauthorized = false;
function onError(e: unknown): void {
  if (e instanceof Unauthorized) {
    unauthorized = true;
    banner.dataset.testid = 'auth-prompt';
    banner.replaceChildren(
      el('strong', {}, 'This server needs an API token. '),
      token() ? 'The saved token was refused; ' : '',
      'enter the token nephilia-server was started with (--api-token / NEPHILIA_API_TOKEN) in the field at the top right and press Enter.',
    );
    banner.hidden = false;
    tokenInput.classList.add('attention');
    tokenInput.focus();
    return;
  }
  banner.dataset.testid = 'banner';
  banner.replaceChildren(el('strong', {}, 'Request failed: '), e instanceof ApiError || e instanceof Error ? e.message : String(e));
  banner.hidden = false;
}
function clearError(): void {
  if (!unauthorized) banner.hidden = true;
}

const topology = new TopologyView(onError);
const outages = new OutagesView(onError, (o: Outage) => {
  state.highlight = o;
  state.window = windowCovering(o.start_ns);
  state.namespace = '';
  go('/');
});
const traces = new TracesView(onError, (path) => go(path));
const views = { topology, outages, traces };

const nav = el('nav', {});
for (const [view, path, label] of [
  ['topology', '/', 'Topology'],
  ['outages', '/outages', 'Outages'],
  ['traces', '/traces', 'Traces'],
] as const) {
  const a = el('a', { href: path, 'data-view': view, 'data-testid': `nav-${view}` }, label);
  a.addEventListener('click', (e) => {
    e.preventDefault();
    go(path);
  });
  nav.append(a);
}

const tokenForm = el('form', { class: 'token-form' }, tokenInput, el('button', { type: 'submit', 'data-testid': 'token-save' }, 'Save'));
tokenForm.addEventListener('submit', (e) => {
  e.preventDefault();
  setToken(tokenInput.value.trim());
  unauthorized = false;
  banner.hidden = true;
  tokenInput.classList.remove('attention');
  void render();
});

const main = el('main', {}, topology.root, outages.root, traces.root);
document.querySelector('#app')!.replaceChildren(
  el('header', { class: 'top' }, el('div', { class: 'brand' }, el('img', { src: '/favicon.svg', alt: '' }), 'Nephilia'), nav, tokenForm),
  banner,
  main,
);

function go(path: string): void {
  if (location.pathname !== path) history.pushState(null, '', path);
  void render();
}
window.addEventListener('popstate', () => void render());

let current: Route['view'] | null = null;
async function render(): Promise<void> {
  const route = parse(location.pathname);
  current = route.view;
  for (const [name, view] of Object.entries(views)) view.root.hidden = name !== route.view;
  for (const a of nav.querySelectorAll<HTMLElement>('a')) a.classList.toggle('active', a.dataset.view === route.view);
  clearError();
  if (route.view === 'topology') {
    topology.shown();
    await topology.refresh();
  } else if (route.view === 'outages') {
    await outages.refresh();
  } else {
    await traces.shown(route.traceId);
  }
}

// Live refresh: the topology (and its open side panel) every 5 s unless paused, the
// outage timeline while it is shown. Never while a token is missing.
setInterval(() => {
  if (unauthorized || document.hidden) return;
  if (current === 'topology' && state.live) void topology.refresh();
  if (current === 'outages') void outages.refresh();
}, 5000);

void render();
