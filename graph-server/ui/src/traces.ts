// Traces view: a search form, the matching traces, and a Jaeger-style timeline of one
// trace (a row per span, offset bars coloured by service, the HBONE tunnel span between
// the client and server spans) with the selected span's attributes.
import { get, type Span, type Trace, type TraceSummary } from './api';
import { dateTime, el, micros, serviceColour } from './format';

export class TracesView {
  readonly root: HTMLElement;
  private readonly form: HTMLFormElement;
  private readonly list: HTMLElement;
  private readonly detail: HTMLElement;
  private readonly services: HTMLDataListElement;

  constructor(
    private readonly onError: (e: unknown) => void,
    private readonly navigate: (path: string) => void,
  ) {
    this.services = el('datalist', { id: 'trace-services' });
    const field = (label: string, input: HTMLElement) => el('label', {}, el('span', {}, label), input);
    this.form = el(
      'form',
      { class: 'trace-search', 'data-testid': 'trace-search' },
      field('Service', el('input', { name: 'service', list: 'trace-services', placeholder: 'any', 'data-testid': 'trace-service' })),
      field('Operation', el('input', { name: 'operation', placeholder: 'GET /cart', 'data-testid': 'trace-operation' })),
      el(
        'div',
        { class: 'pair' },
        field('Min duration', el('input', { name: 'min_duration', placeholder: '100ms', size: '6' })),
        field('Max duration', el('input', { name: 'max_duration', placeholder: '2s', size: '6' })),
      ),
      el(
        'div',
        { class: 'pair' },
        field('Since', selectOf('since', ['5m', '15m', '1h'], '1h')),
        field('Limit', selectOf('limit', ['20', '50', '100'], '20')),
      ),
      el('label', { class: 'check' }, el('input', { type: 'checkbox', name: 'error', 'data-testid': 'trace-errors' }), ' errors only'),
      el('button', { type: 'submit', class: 'primary', 'data-testid': 'trace-find' }, 'Find traces'),
      this.services,
    );
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      void this.search();
    });
    this.list = el('div', { class: 'trace-list', 'data-testid': 'trace-list' });
    this.detail = el('div', { class: 'trace-detail', 'data-testid': 'trace-detail' }, el('p', { class: 'muted' }, 'Search, then pick a trace.'));
    this.root = el(
      'section',
      { class: 'view traces-view', 'data-testid': 'traces-view' },
      el('div', { class: 'trace-side' }, this.form, this.list),
      this.detail,
    );
  }

  private searched = false;
  /** Answers to older searches are dropped when a newer one was started. */
  private searchSeq = 0;

  async shown(traceId: string | null): Promise<void> {
    if (!this.searched) await this.search();
    if (traceId) await this.open(traceId);
  }

  async search(): Promise<void> {
    this.searched = true;
    const seq = ++this.searchSeq;
    const data = new FormData(this.form);
    const value = (k: string) => String(data.get(k) ?? '').trim();
    let traces: TraceSummary[];
    try {
      ({ traces } = await get<{ traces: TraceSummary[] }>('traces', {
        service: value('service'),
        operation: value('operation'),
        min_duration: value('min_duration'),
        max_duration: value('max_duration'),
        error: data.get('error') ? true : undefined,
        since: value('since'),
        limit: value('limit'),
      }));
    } catch (e) {
      this.list.replaceChildren(el('p', { class: 'error' }, e instanceof Error ? e.message : String(e)));
      this.onError(e);
      return;
    }
    if (seq !== this.searchSeq) return;
    const known = new Set([...this.services.options].map((o) => o.value));
    for (const t of traces) for (const s of t.services) if (!known.has(s)) {
      known.add(s);
      this.services.append(el('option', { value: s }));
    }
    const longest = Math.max(1, ...traces.map((t) => t.duration_us));
    const rows = traces.map((t) => {
      const row = el(
        'button',
        { type: 'button', class: `trace-row${t.error_count ? ' has-error' : ''}`, 'data-testid': 'trace-row', 'data-trace-id': t.trace_id },
        el(
          'div',
          { class: 'trace-row-head' },
          el('strong', {}, `${t.root_service}: ${t.root_operation}`),
          el('span', { class: 'mono' }, micros(t.duration_us)),
        ),
        el('div', { class: 'trace-row-bar' }, el('i', { style: `width:${(100 * t.duration_us) / longest}%` })),
        el(
          'div',
          { class: 'trace-row-meta' },
          el('span', {}, `${t.span_count} spans`),
          t.error_count ? el('span', { class: 'error' }, `${t.error_count} error${t.error_count === 1 ? '' : 's'}`) : null,
          el('span', {}, ...t.services.map((s) => el('i', { class: 'svc', style: `background:${serviceColour(s)}`, title: s }))),
          el('span', { class: 'muted' }, dateTime(t.start_ns)),
        ),
      );
      row.addEventListener('click', () => this.navigate(`/traces/${t.trace_id}`));
      return row;
    });
    this.list.replaceChildren(
      el('div', { class: 'muted list-head' }, `${traces.length} trace${traces.length === 1 ? '' : 's'}`),
      ...rows,
    );
  }

  async open(traceId: string): Promise<void> {
    for (const row of this.list.querySelectorAll<HTMLElement>('.trace-row')) row.classList.toggle('active', row.dataset.traceId === traceId);
    let trace: Trace;
    try {
      trace = await get<Trace>(`traces/${traceId}`);
    } catch (e) {
      this.detail.replaceChildren(el('p', { class: 'error' }, e instanceof Error ? e.message : String(e)));
      this.onError(e);
      return;
    }
    this.renderTrace(trace);
  }

  private renderTrace(trace: Trace): void {
    const depth = new Map<string, number>();
    for (const s of trace.spans) depth.set(s.span_id, s.parent_span_id ? (depth.get(s.parent_span_id) ?? 0) + 1 : 0);
    const start = trace.start_ns;
    const total = Math.max(1, trace.duration_us);
    const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => el('span', { style: `left:${f * 100}%` }, micros(f * total)));
    const spanDetail = el('div', { class: 'span-detail', 'data-testid': 'span-detail' });
    const rows = trace.spans.map((s) => {
      const offset = ((s.start_ns - start) / 1000 / total) * 100;
      const width = Math.max(0.4, (s.duration_us / total) * 100);
      const colour = serviceColour(s.service);
      const row = el(
        'div',
        { class: `span-row kind-${s.kind}${s.error ? ' error' : ''}`, 'data-testid': `span-${s.kind}`, 'data-span-id': s.span_id, role: 'button', tabindex: '0' },
        el(
          'div',
          { class: 'span-name', style: `padding-left:${8 + (depth.get(s.span_id) ?? 0) * 16}px` },
          el('i', { class: 'svc', style: `background:${colour}` }),
          el('strong', {}, s.service),
          el('span', { class: 'muted' }, ` ${s.operation}`),
          s.error ? el('span', { class: 'error' }, ' !') : null,
        ),
        el(
          'div',
          { class: 'span-track' },
          el(
            'div',
            { class: 'span-bar', style: `left:${offset}%;width:${width}%;background:${colour}` },
          ),
          el('span', { class: 'span-duration', style: offset + width > 80 ? `right:${100 - offset + 0.5}%` : `left:${offset + width + 0.5}%` }, `${micros(s.duration_us)}${s.kind === 'tunnel' ? ` · ${s.attributes.tunnel_reused === 'true' ? 'pooled' : 'new tunnel'}` : ''}`),
        ),
      );
      const pick = () => {
        for (const r of rows) r.classList.toggle('active', r === row);
        spanDetail.replaceChildren(...describeSpan(s, start));
      };
      row.addEventListener('click', pick);
      row.addEventListener('keydown', (e) => {
        if (e.key === 'Enter') pick();
      });
      return row;
    });
    this.detail.replaceChildren(
      el(
        'header',
        { class: 'trace-head' },
        el('h2', { 'data-testid': 'trace-title' }, `${trace.root_service}: ${trace.root_operation}`),
        el(
          'div',
          { class: 'muted' },
          `${dateTime(trace.start_ns)} · ${micros(trace.duration_us)} · ${trace.span_count} spans · ${trace.services.length} services · `,
          el('span', { class: trace.error_count ? 'error' : '' }, `${trace.error_count} errors`),
          el('span', { class: 'mono' }, ` · ${trace.trace_id}`),
        ),
      ),
      el('div', { class: 'span-ruler' }, el('div', { class: 'span-name muted' }, 'Service / operation'), el('div', { class: 'span-track ticks' }, ...ticks)),
      el('div', { class: 'span-rows', 'data-testid': 'trace-timeline' }, ...rows),
      spanDetail,
    );
    // Open the first tunnel span: it is what the mesh adds and what Jaeger cannot show.
    const first = rows.find((r) => r.classList.contains('kind-tunnel')) ?? rows[0];
    first?.click();
  }
}

function selectOf(name: string, values: string[], selected: string): HTMLSelectElement {
  const select = el('select', { name });
  for (const v of values) select.append(el('option', { value: v }, v));
  select.value = selected;
  return select;
}

function describeSpan(s: Span, traceStart: number): HTMLElement[] {
  const rows: [string, string][] = [
    ['kind', s.kind],
    ['service', s.service],
    ['operation', s.operation],
    ['start', `+${micros((s.start_ns - traceStart) / 1000)}`],
    ['duration', micros(s.duration_us)],
    ['node', s.node],
    ['span id', s.span_id],
    ...Object.entries(s.attributes),
  ];
  return [
    el('h3', {}, `${s.service} · ${s.operation}`),
    el(
      'table',
      { class: 'attributes' },
      el('tbody', {}, ...rows.map(([k, v]) => el('tr', {}, el('th', {}, k), el('td', { class: 'mono' }, v)))),
    ),
  ];
}
