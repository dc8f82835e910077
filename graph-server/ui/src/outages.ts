// Outages view: incidents as bars on a time axis (open ones run to now and pulse), and
// the selected one's root cause, evidence, failures by kind and peak error rate.
import { get, type Outage } from './api';
import { clock, dateTime, el, ERROR_KINDS, percent, shortName } from './format';

const SVG = 'http://www.w3.org/2000/svg';
const RANGES = ['15m', '1h'] as const;
const RANGE_SECONDS = { '15m': 900, '1h': 3600 } as const;

export class OutagesView {
  readonly root: HTMLElement;
  private outages: Outage[] = [];
  private selected: number | null = null;
  private range: (typeof RANGES)[number] = '15m';
  private readonly timeline: HTMLElement;
  private readonly detail: HTMLElement;
  private readonly status: HTMLElement;

  constructor(
    private readonly onError: (e: unknown) => void,
    private readonly showInTopology: (o: Outage) => void,
  ) {
    this.timeline = el('div', { class: 'timeline', 'data-testid': 'outage-timeline' });
    this.detail = el('div', { class: 'outage-detail', 'data-testid': 'outage-detail' });
    this.status = el('span', { class: 'toolbar-status' });
    const range = el('select', { 'aria-label': 'Range', 'data-testid': 'outage-range' });
    for (const r of RANGES) range.append(el('option', { value: r }, `last ${r}`));
    range.value = this.range;
    range.addEventListener('change', () => {
      this.range = range.value as (typeof RANGES)[number];
      void this.refresh();
    });
    this.root = el(
      'section',
      { class: 'view outages-view', 'data-testid': 'outages-view' },
      el('div', { class: 'toolbar' }, el('label', {}, 'Range ', range), this.status),
      this.timeline,
      this.detail,
    );
  }

  async refresh(): Promise<void> {
    try {
      const { outages } = await get<{ outages: Outage[] }>('outages', { since: this.range });
      this.outages = outages;
    } catch (e) {
      this.onError(e);
      return;
    }
    const open = this.outages.filter((o) => o.open).length;
    this.status.textContent = `${this.outages.length} incident${this.outages.length === 1 ? '' : 's'}${open ? `, ${open} open` : ''}`;
    if (this.selected === null && this.outages.length) this.selected = this.outages[0]!.id;
    this.draw();
  }

  private draw(): void {
    const now = Date.now() * 1e6;
    const from = now - RANGE_SECONDS[this.range] * 1e9;
    const W = 1000;
    const rowH = 30;
    const axisH = 24;
    const list = [...this.outages].sort((a, b) => a.start_ns - b.start_ns);
    const H = axisH + Math.max(1, list.length) * rowH + 8;
    const x = (t: number) => 10 + (Math.max(from, Math.min(now, t)) - from) / (now - from) * (W - 20);
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
    svg.setAttribute('width', '100%');
    svg.setAttribute('class', 'timeline-svg');
    const add = (tag: string, attrs: Record<string, string | number>, text?: string) => {
      const node = document.createElementNS(SVG, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
      if (text !== undefined) node.textContent = text;
      svg.append(node);
      return node;
    };
    const ticks = 6;
    for (let i = 0; i <= ticks; i++) {
      const t = from + ((now - from) * i) / ticks;
      add('line', { x1: x(t), x2: x(t), y1: axisH - 6, y2: H, class: 'grid' });
      add('text', { x: x(t), y: 12, 'text-anchor': i === 0 ? 'start' : i === ticks ? 'end' : 'middle', class: 'tick' }, clock(t));
    }
    if (list.length === 0) {
      add('text', { x: W / 2, y: axisH + 20, 'text-anchor': 'middle', class: 'tick' }, 'No incidents in this range.');
    }
    list.forEach((o, i) => {
      const y = axisH + i * rowH + 4;
      const x0 = x(o.start_ns);
      const x1 = Math.max(x0 + 6, x(o.end_ns ?? now));
      const g = document.createElementNS(SVG, 'g');
      g.setAttribute('class', `outage-bar${o.open ? ' open' : ''}${o.id === this.selected ? ' selected' : ''}`);
      g.setAttribute('data-testid', `outage-bar-${o.id}`);
      g.setAttribute('role', 'button');
      g.setAttribute('tabindex', '0');
      const rect = document.createElementNS(SVG, 'rect');
      for (const [k, v] of Object.entries({ x: x0, y, width: x1 - x0, height: rowH - 8, rx: 4 })) rect.setAttribute(k, String(v));
      const label = document.createElementNS(SVG, 'text');
      const right = x1 + 6 < W - 260;
      label.setAttribute('x', String(right ? x1 + 6 : x0 - 6));
      label.setAttribute('y', String(y + rowH / 2));
      label.setAttribute('text-anchor', right ? 'start' : 'end');
      label.setAttribute('class', 'bar-label');
      const cause = o.root_cause ? `${shortName(o.root_cause.node)} ${o.root_cause.kind}` : 'cause unknown';
      label.textContent = `#${o.id} ${cause}${o.open ? ' · OPEN' : ''}`;
      const tip = document.createElementNS(SVG, 'title');
      tip.textContent = `${o.start} – ${o.end ?? 'now'}`;
      g.append(rect, label, tip);
      const pick = () => {
        this.selected = o.id;
        this.draw();
      };
      g.addEventListener('click', pick);
      g.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' || e.key === ' ') pick();
      });
      svg.append(g);
    });
    this.timeline.replaceChildren(svg);
    const outage = this.outages.find((o) => o.id === this.selected);
    this.detail.replaceChildren(...(outage ? this.describe(outage) : [el('p', { class: 'muted' }, 'Select an incident.')]));
  }

  private describe(o: Outage): HTMLElement[] {
    const duration = ((o.end_ns ?? Date.now() * 1e6) - o.start_ns) / 1e9;
    const show = el('button', { type: 'button', class: 'primary', 'data-testid': 'show-in-topology' }, 'Show affected edges in topology');
    show.addEventListener('click', () => this.showInTopology(o));
    const failures = ERROR_KINDS.filter((k) => o.failures[k] > 0);
    const cause = o.root_cause;
    return [
      el(
        'div',
        { class: 'outage-head' },
        el('h2', {}, `Incident #${o.id}`, o.open ? el('span', { class: 'badge failing' }, 'open') : el('span', { class: 'badge healthy' }, 'resolved')),
        el('span', { class: 'muted' }, `${dateTime(o.start_ns)} → ${o.end_ns ? dateTime(o.end_ns) : 'now'} (${Math.round(duration)} s)`),
        show,
      ),
      el(
        'div',
        { class: 'outage-grid' },
        el(
          'div',
          { class: 'card root-cause', 'data-testid': 'root-cause' },
          el('h3', {}, 'Probable root cause'),
          cause
            ? el('p', { class: 'cause' }, el('strong', { 'data-testid': 'root-cause-node' }, cause.node), ` — ${cause.kind.replace('_', ' ')} (${percent(cause.rate)} of attempts) since ${clock(cause.since_ns)}`)
            : el('p', { class: 'muted' }, 'Not determined.'),
          cause ? el('p', { class: 'evidence', 'data-testid': 'root-cause-evidence' }, cause.evidence) : null,
          el('p', {}, 'Peak error rate ', el('strong', { 'data-testid': 'peak-error-rate' }, percent(o.peak_error_rate))),
        ),
        el(
          'div',
          { class: 'card' },
          el('h3', {}, 'Failures by kind'),
          el(
            'table',
            { 'data-testid': 'outage-failures' },
            el('tbody', {}, ...(failures.length ? failures.map((k) => el('tr', {}, el('td', {}, k.replace('_', ' ')), el('td', { class: 'num' }, String(o.failures[k])))) : [el('tr', {}, el('td', {}, 'none recorded'))])),
          ),
        ),
        el(
          'div',
          { class: 'card' },
          el('h3', {}, `Affected edges (${o.affected_edges.length})`),
          el('ul', { 'data-testid': 'affected-edges' }, ...o.affected_edges.map((e) => el('li', {}, `${shortName(e.source)} → ${shortName(e.target)}`))),
        ),
      ),
    ];
  }
}
