// The topology's side panel: a node's or an edge's totals over the window, RED and tunnel
// charts per bucket, and its recent failures.
import { get, type EdgeDetail, type FlowRecord, type NodeDetail, type Peer, type Summary } from './api';
import { lineChart, type Point } from './charts';
import { bytes, clock, count, el, ERROR_KINDS, HEALTH_COLOURS, micros, percent, rate, shortName } from './format';
import { state } from './state';

type Selection = { kind: 'node'; id: string } | { kind: 'edge'; id: string; source: string; target: string };

export class SidePanel {
  readonly root: HTMLElement;
  private selection: Selection | null = null;
  private readonly body: HTMLElement;
  private readonly title: HTMLElement;

  constructor(
    private readonly onError: (e: unknown) => void,
    private readonly onClose: () => void,
  ) {
    this.title = el('h2', { 'data-testid': 'panel-title' });
    const close = el('button', { type: 'button', class: 'close', 'aria-label': 'Close', 'data-testid': 'panel-close' }, '×');
    close.addEventListener('click', () => this.close());
    this.body = el('div', { class: 'panel-body' });
    this.root = el('aside', { class: 'side-panel', hidden: '', 'data-testid': 'side-panel' }, el('header', {}, this.title, close), this.body);
  }

  close(): void {
    this.selection = null;
    this.root.hidden = true;
    this.onClose();
  }

  showNode(id: string): void {
    this.selection = { kind: 'node', id };
    this.open();
  }

  showEdge(id: string, source: string, target: string): void {
    this.selection = { kind: 'edge', id, source, target };
    this.open();
  }

  private open(): void {
    this.root.hidden = false;
    this.title.textContent = this.selection?.kind === 'edge' ? `${shortName(this.selection.source)} → ${shortName(this.selection.target)}` : shortName(this.selection?.id ?? '');
    this.body.replaceChildren(el('p', { class: 'muted' }, 'Loading…'));
    void this.refresh();
  }

  async refresh(): Promise<void> {
    const sel = this.selection;
    if (!sel) return;
    try {
      if (sel.kind === 'edge') {
        const [detail, failures] = await Promise.all([
          get<EdgeDetail>('edge', { source: sel.source, target: sel.target, window: state.window, level: state.level }),
          this.failures(sel.target),
        ]);
        if (this.selection !== sel) return;
        const mine = failures.filter((r) => matches(r.source, sel.source) && matches(r.destination, sel.target));
        const e = detail.edge;
        const carried = `${e.protocol.toUpperCase()}${(e.mtls_share ?? 0) > 0 ? ' over HBONE (mTLS)' : ', not in the mesh'}`;
        this.render(sel, e, detail.series.map((p) => ({ t: p.start_ns, m: p })), detail.bucket_seconds, mine, carried);
      } else {
        const [detail, failures] = await Promise.all([
          get<NodeDetail>(`nodes/${encodeURIComponent(sel.id)}`, { window: state.window }),
          this.failures(sel.id),
        ]);
        if (this.selection !== sel) return;
        const mine = failures.filter((r) => matches(r.source, sel.id) || matches(r.destination, sel.id));
        const series = detail.series.map((p) => ({ t: p.start_ns, m: p.inbound }));
        this.render(sel, detail.node.inbound, series, detail.bucket_seconds, mine, detail.node.kind, detail);
      }
    } catch (e) {
      this.body.replaceChildren(el('p', { class: 'error' }, String(e instanceof Error ? e.message : e)));
      this.onError(e);
    }
  }

  /** Failed records touching `id` in the window (filtered to the edge by the caller). */
  private async failures(id: string): Promise<FlowRecord[]> {
    const [kind, ns, ...rest] = id.split(':');
    const name = rest.join(':');
    const params =
      kind === 'namespace'
        ? { namespace: ns }
        : kind === 'external'
          ? { workload: [ns, ...rest].join(':') }
          : { workload: name, namespace: ns };
    const { records } = await get<{ records: FlowRecord[] }>('flows', { ...params, error: true, since: state.window, limit: 500 });
    return records;
  }

  private render(
    sel: Selection,
    summary: Summary | null,
    series: { t: number; m: Summary | null }[],
    bucketSeconds: number,
    failures: FlowRecord[],
    subtitle: string,
    node?: NodeDetail,
  ): void {
    const to = Date.now() * 1e6;
    const from = to - windowNs();
    const health = summary?.health ?? 'idle';
    const badge = el('span', { class: `badge ${health}`, style: `background:${HEALTH_COLOURS[health]}`, 'data-testid': 'panel-health' }, health);
    const parts: (HTMLElement | null)[] = [el('div', { class: 'panel-sub' }, badge, el('span', { class: 'muted' }, subtitle))];
    if (!summary) {
      parts.push(el('p', { class: 'muted' }, 'Receives no traffic in this window.'));
    } else {
      parts.push(stats(summary));
      const pt = (f: (m: Summary) => number | null): Point[] => series.map((p) => ({ t_ns: p.t + bucketSeconds * 5e8, value: p.m ? f(p.m) : null }));
      const l7 = summary.requests > 0;
      const charts = el('div', { class: 'charts' });
      charts.append(
        l7
          ? lineChart(pt((m) => m.requests_per_second), { title: 'Requests/s', testid: 'chart-rate', colour: '#0969da', format: rate, from_ns: from, to_ns: to })
          : lineChart(pt((m) => m.connections_per_second), { title: 'Connections/s', testid: 'chart-rate', colour: '#0969da', format: rate, from_ns: from, to_ns: to }),
        lineChart(pt((m) => (m.requests + m.connections > 0 ? m.error_rate : null)), { title: 'Error rate', testid: 'chart-errors', colour: HEALTH_COLOURS.failing, format: percent, max: 1, from_ns: from, to_ns: to }),
        lineChart(pt((m) => m.latency?.p95_us ?? null), { title: l7 ? 'p95 latency' : 'p95 connect', testid: 'chart-latency', colour: '#8250df', format: micros, from_ns: from, to_ns: to }),
      );
      if (summary.tunnel_setup || summary.pool_reuse_ratio !== null) {
        charts.append(
          lineChart(pt((m) => m.tunnel_setup?.p95_us ?? null), { title: 'HBONE tunnel setup p95', testid: 'chart-tunnel', colour: '#1b7c83', format: micros, from_ns: from, to_ns: to }),
          lineChart(pt((m) => m.pool_reuse_ratio), { title: 'Tunnel reuse ratio', testid: 'chart-reuse', colour: '#9a6700', format: percent, max: 1, from_ns: from, to_ns: to }),
        );
      }
      parts.push(el('h3', {}, sel.kind === 'node' ? 'Inbound over time' : 'Over time'), charts);
    }
    if (node) parts.push(neighbours(node));
    parts.push(failureList(failures));
    this.body.replaceChildren(...parts.filter((p): p is HTMLElement => p !== null));
  }
}

function windowNs(): number {
  const seconds = { '1m': 60, '5m': 300, '15m': 900, '1h': 3600 }[state.window];
  return seconds * 1e9;
}

/** Whether a record's peer is the graph node `id` (at any level). */
export function matches(peer: Peer | undefined, id: string): boolean {
  if (!peer) return false;
  const [kind, ns, ...rest] = id.split(':');
  const name = rest.join(':');
  switch (kind) {
    case 'workload':
      return peer.workload === name && peer.namespace === ns;
    case 'service':
      return peer.service === name || peer.service.startsWith(`${name}:`);
    case 'namespace':
      return peer.namespace === ns;
    case 'external':
      return peer.ip === [ns, ...rest].join(':') && !peer.workload;
    default:
      return false;
  }
}

function stats(s: Summary): HTMLElement {
  const errors = s.errors;
  const failed = ERROR_KINDS.filter((k) => errors[k] > 0).map((k) => `${k} ${errors[k]}`);
  const rows: [string, string, string][] = [];
  if (s.requests > 0) {
    rows.push(['Requests', count(s.requests), 'stat-requests']);
    rows.push(['Requests/s', rate(s.requests_per_second), 'stat-rps']);
  }
  if (s.connections > 0) {
    rows.push(['Connections', count(s.connections), 'stat-connections']);
    rows.push(['Connections/s', rate(s.connections_per_second), 'stat-cps']);
  }
  rows.push(['Error rate', percent(s.error_rate), 'stat-error-rate']);
  rows.push(['Errors', failed.length ? failed.join(', ') : 'none', 'stat-errors']);
  if (s.latency) {
    const kind = s.latency_kind === 'connect' ? 'connect' : 'latency';
    rows.push([`p50 / p95 / p99 ${kind}`, `${micros(s.latency.p50_us)} / ${micros(s.latency.p95_us)} / ${micros(s.latency.p99_us)}`, 'stat-latency']);
  }
  if (s.tunnel_setup) rows.push(['Tunnel setup p50 / p95', `${micros(s.tunnel_setup.p50_us)} / ${micros(s.tunnel_setup.p95_us)}`, 'stat-tunnel']);
  if (s.pool_reuse_ratio !== null) rows.push(['Tunnel reuse', percent(s.pool_reuse_ratio), 'stat-reuse']);
  if (s.mtls_share !== null) rows.push(['mTLS (HBONE)', percent(s.mtls_share), 'stat-mtls']);
  rows.push(['Bytes sent / received', `${bytes(s.bytes_sent)} / ${bytes(s.bytes_received)}`, 'stat-bytes']);
  return el(
    'dl',
    { class: 'stats', 'data-testid': 'panel-stats' },
    ...rows.flatMap(([k, v, id]) => [el('dt', {}, k), el('dd', { 'data-testid': id }, v)]),
  );
}

function neighbours(node: NodeDetail): HTMLElement {
  const line = (id: string, e: Summary) =>
    el('li', {}, el('i', { class: 'dot', style: `background:${HEALTH_COLOURS[e.health]}` }), `${shortName(id)} · ${e.requests > 0 ? `${rate(e.requests_per_second)} rps` : `${rate(e.connections_per_second)} cps`} · ${percent(e.error_rate)}`);
  return el(
    'div',
    { class: 'neighbours' },
    el('h3', {}, `Callers (${node.incoming.length})`),
    el('ul', {}, ...node.incoming.map((e) => line(e.source, e))),
    el('h3', {}, `Calls (${node.outgoing.length})`),
    el('ul', {}, ...node.outgoing.map((e) => line(e.target, e))),
  );
}

function describe(r: FlowRecord): string {
  if (r.kind === 'request') {
    const status = r.grpc_status !== null && r.grpc_status !== undefined && r.grpc_status !== 0 ? `grpc-status ${r.grpc_status}` : `HTTP ${r.status ?? '?'}`;
    return `${r.method ?? ''} ${r.path ?? ''} → ${status}`;
  }
  return `${r.kind === 'mesh_flow' ? 'connection' : 'socket'} ${r.outcome ?? ''}`;
}

function failureList(records: FlowRecord[]): HTMLElement {
  const shown = records.slice(0, 15);
  const rows = shown.map((r) =>
    el(
      'tr',
      { 'data-testid': 'failure-row' },
      el('td', { class: 'mono' }, clock(r.end_ns ?? r.start_ns)),
      el('td', {}, `${r.source?.workload || r.source?.ip || '?'} → ${r.destination?.workload || r.destination?.service || r.original_destination || '?'}`),
      el('td', {}, describe(r)),
      el('td', { class: 'muted' }, r.side ?? ''),
    ),
  );
  return el(
    'div',
    { class: 'failures', 'data-testid': 'recent-failures' },
    el('h3', {}, `Recent failures (${records.length}${records.length >= 500 ? '+' : ''})`),
    rows.length ? el('table', {}, el('tbody', {}, ...rows)) : el('p', { class: 'muted' }, 'None in this window.'),
  );
}
