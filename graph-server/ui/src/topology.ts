// Topology view: workloads/services in namespace boxes, edges labelled with rate, p95,
// error share, mTLS lock and tunnel setup p95, coloured by health. Clicking an element
// opens the side panel (panel.ts).
import cytoscape from 'cytoscape';
import type { Core, ElementDefinition, EventObject } from 'cytoscape';

import { get, type Edge, type Graph, type GraphNode, type Health, type Level } from './api';
import { layered, type Position } from './layout';
import { SidePanel } from './panel';
import { el, HEALTH_COLOURS, micros, percent, rate } from './format';
import { state, WINDOWS, type Window } from './state';


/** The edge label: what flows, how fast, how well, and how it is carried. */
export function edgeLabel(e: Edge): string {
  const l7 = e.requests > 0;
  const flow = l7 ? `${rate(e.requests_per_second)} rps` : `${rate(e.connections_per_second)} cps`;
  const lock = (e.mtls_share ?? 0) > 0 ? '\u{1F512} ' : '';
  const first = `${lock}${flow} · ${percent(e.error_rate)}`;
  const parts: string[] = [];
  if (e.latency) parts.push(`p95 ${micros(e.latency.p95_us)}`);
  if (e.tunnel_setup) parts.push(`tun ${micros(e.tunnel_setup.p95_us)}`);
  return parts.length ? `${first}\n${parts.join(' · ')}` : first;
}

const NODE_SHAPES: Record<GraphNode['kind'], string> = {
  workload: 'ellipse',
  service: 'round-triangle',
  namespace: 'round-rectangle',
  external: 'diamond',
};

const STYLE: cytoscape.StylesheetJson = [
  {
    selector: 'node[shape]',
    style: {
      'background-color': '#ffffff',
      'border-width': 3,
      'border-color': 'data(colour)',
      shape: 'data(shape)' as never,
      width: 44,
      height: 44,
      label: 'data(label)',
      'font-size': 12,
      'font-family': 'system-ui, sans-serif',
      color: '#1f2328',
      'text-valign': 'bottom',
      'text-margin-y': 6,
      'text-background-color': '#ffffff',
      'text-background-opacity': 0.8,
      'text-background-padding': '2px',
    },
  },
  {
    selector: 'node.namespace-box',
    style: {
      shape: 'round-rectangle',
      'background-color': '#f6f8fa',
      'border-color': '#afb8c1',
      'border-width': 1,
      'border-style': 'dashed',
      label: 'data(label)',
      'text-valign': 'top',
      'text-halign': 'center',
      'text-margin-y': -4,
      'font-size': 13,
      'font-weight': 'bold',
      color: '#57606a',
      'text-background-opacity': 0,
      padding: '28px',
    },
  },
  {
    selector: 'edge',
    style: {
      width: 'data(width)',
      'line-color': 'data(colour)',
      'target-arrow-color': 'data(colour)',
      'target-arrow-shape': 'triangle',
      'curve-style': 'bezier',
      'control-point-step-size': 60,
      label: 'data(label)',
      'text-wrap': 'wrap',
      'font-size': 10,
      'font-family': 'system-ui, sans-serif',
      color: '#1f2328',
      'text-background-color': '#ffffff',
      'text-background-opacity': 0.9,
      'text-background-padding': '2px',
      'text-background-shape': 'roundrectangle',
      'text-border-color': 'data(colour)',
      'text-border-width': 1,
      'text-border-opacity': 0.6,
      // Set by separateLabels: slides the label along its edge, off other labels.
      'text-margin-x': 'data(labelX)' as never,
      'text-margin-y': 'data(labelY)' as never,
    },
  },
  {
    // Edges that skip layers bend through the rows the layout kept free for them.
    selector: 'edge.routed',
    style: {
      'curve-style': 'round-segments',
      'edge-distances': 'node-position',
      'segment-distances': 'data(bendDistances)',
      'segment-weights': 'data(bendWeights)',
      'segment-radius': 30,
      // @types/cytoscape does not know round segments' radius yet.
    } as cytoscape.Css.Edge,
  },
  { selector: 'edge.idle', style: { 'line-style': 'dashed' } },
  { selector: ':selected', style: { 'overlay-color': '#0969da', 'overlay-opacity': 0.18, 'overlay-padding': 6 } },
  { selector: '.faded', style: { opacity: 0.25 } },
  {
    selector: 'edge.affected',
    style: {
      width: 6,
      'line-color': HEALTH_COLOURS.failing,
      'target-arrow-color': HEALTH_COLOURS.failing,
      'underlay-color': HEALTH_COLOURS.failing,
      'underlay-opacity': 0.25,
      'underlay-padding': 6,
    },
  },
  { selector: 'node.affected', style: { 'border-width': 5, 'border-color': HEALTH_COLOURS.failing } },
];

function edgeWidth(e: Edge): number {
  const r = e.requests > 0 ? e.requests_per_second : e.connections_per_second;
  return Math.min(7, 1.5 + Math.log2(1 + r));
}

export class TopologyView {
  readonly root: HTMLElement;
  private cy: Core | null = null;
  private readonly canvas: HTMLElement;
  private readonly status: HTMLElement;
  private readonly panel: SidePanel;
  private readonly namespaceSelect: HTMLSelectElement;
  private readonly highlightBar: HTMLElement;
  private shape = '';

  constructor(private readonly onError: (e: unknown) => void) {
    this.canvas = el('div', { class: 'graph-canvas', 'data-testid': 'topology-graph' });
    this.status = el('span', { class: 'toolbar-status', 'data-testid': 'topology-status' });
    this.panel = new SidePanel(onError, () => this.cy?.elements().unselect());
    this.namespaceSelect = el('select', { 'data-testid': 'namespace-filter', 'aria-label': 'Namespace' });
    this.highlightBar = el('div', { class: 'highlight-bar', hidden: '', 'data-testid': 'outage-highlight' });
    this.root = el(
      'section',
      { class: 'view topology-view', 'data-testid': 'topology-view' },
      this.toolbar(),
      this.highlightBar,
      el('div', { class: 'topology-body' }, this.canvas, this.panel.root),
    );
  }

  private toolbar(): HTMLElement {
    const levels = el('div', { class: 'segmented', role: 'group', 'aria-label': 'Level', 'data-testid': 'level-switch' });
    for (const level of ['workload', 'service', 'namespace'] as Level[]) {
      const b = el('button', { type: 'button', 'data-level': level, 'data-testid': `level-${level}` }, level);
      b.addEventListener('click', () => {
        state.level = level;
        this.shape = '';
        this.panel.close();
        void this.refresh();
      });
      levels.append(b);
    }
    this.namespaceSelect.addEventListener('change', () => {
      state.namespace = this.namespaceSelect.value;
      this.shape = '';
      void this.refresh();
    });
    const windowSelect = el('select', { 'data-testid': 'window-select', 'aria-label': 'Time window' });
    for (const w of WINDOWS) windowSelect.append(el('option', { value: w }, `last ${w}`));
    windowSelect.value = state.window;
    windowSelect.addEventListener('change', () => {
      state.window = windowSelect.value as Window;
      void this.refresh();
    });
    const live = el('button', { type: 'button', class: 'live', 'data-testid': 'live-toggle' });
    const paint = () => {
      live.textContent = state.live ? '❚❚ Pause' : '▶ Live';
      live.classList.toggle('on', state.live);
      live.title = state.live ? 'Refreshing every 5 s' : 'Paused';
    };
    live.addEventListener('click', () => {
      state.live = !state.live;
      paint();
    });
    paint();
    this.syncControls = () => {
      windowSelect.value = state.window;
      for (const b of levels.querySelectorAll('button')) b.classList.toggle('active', b.dataset.level === state.level);
    };
    return el(
      'div',
      { class: 'toolbar' },
      levels,
      el('label', {}, 'Namespace ', this.namespaceSelect),
      el('label', {}, 'Window ', windowSelect),
      live,
      this.status,
      legend(),
    );
  }

  private syncControls: () => void = () => {};

  async refresh(): Promise<void> {
    this.syncControls();
    let graph: Graph;
    try {
      graph = await get<Graph>('graph', { window: state.window, level: state.level, namespace: state.namespace });
    } catch (e) {
      this.onError(e);
      return;
    }
    this.fillNamespaces(graph);
    this.draw(graph);
    this.applyHighlight();
    const n = graph.nodes.length;
    const m = graph.edges.length;
    this.status.textContent = `${n} node${n === 1 ? '' : 's'}, ${m} edge${m === 1 ? '' : 's'} · ${new Date().toLocaleTimeString([], { hour12: false })}`;
    await this.panel.refresh();
  }

  /** Namespaces seen so far stay in the list even when the filter hides them. */
  private readonly namespaces = new Set<string>();
  private fillNamespaces(graph: Graph): void {
    for (const n of graph.nodes) if (n.namespace) this.namespaces.add(n.namespace);
    const wanted = ['', ...[...this.namespaces].sort()];
    const have = [...this.namespaceSelect.options].map((o) => o.value);
    if (wanted.join('\n') !== have.join('\n')) {
      this.namespaceSelect.replaceChildren(...wanted.map((ns) => el('option', { value: ns }, ns || 'all namespaces')));
    }
    this.namespaceSelect.value = state.namespace;
  }

  private elements(graph: Graph): ElementDefinition[] {
    const boxes = state.level !== 'namespace';
    const { positions, routes } = layered(graph.nodes, graph.edges);
    const out: ElementDefinition[] = [];
    if (boxes) {
      for (const ns of new Set(graph.nodes.map((n) => (n.kind === 'external' ? null : n.namespace)))) {
        if (ns) out.push({ group: 'nodes', data: { id: `box:${ns}`, label: ns }, classes: 'namespace-box', selectable: false });
      }
    }
    for (const n of graph.nodes) {
      out.push({
        group: 'nodes',
        data: {
          id: n.id,
          label: n.name,
          parent: boxes && n.namespace && n.kind !== 'external' ? `box:${n.namespace}` : undefined,
          colour: HEALTH_COLOURS[n.health],
          shape: NODE_SHAPES[n.kind],
          health: n.health,
        },
        position: positions.get(n.id),
      });
    }
    for (const e of graph.edges) {
      const route = routes.get(e.id);
      const bends = route ? relativeBends(positions.get(e.source)!, positions.get(e.target)!, route) : null;
      out.push({
        group: 'edges',
        data: {
          id: e.id,
          source: e.source,
          target: e.target,
          label: edgeLabel(e),
          colour: HEALTH_COLOURS[e.health],
          width: edgeWidth(e),
          health: e.health,
          labelX: 0,
          labelY: 0,
          ...(bends && { bendDistances: bends.distances, bendWeights: bends.weights }),
        },
        classes: [e.health === 'idle' ? 'idle' : '', bends ? 'routed' : ''].filter(Boolean).join(' '),
      });
    }
    return out;
  }

  private draw(graph: Graph): void {
    const shape = [state.level, ...graph.nodes.map((n) => n.id), ...graph.edges.map((e) => e.id)].join('|');
    if (this.cy && shape === this.shape) {
      // Same nodes and edges: update numbers and colours in place, keep the viewport.
      const cy = this.cy;
      cy.batch(() => {
        for (const def of this.elements(graph)) {
          const ele = cy.getElementById(def.data.id!);
          ele.data(def.data);
          if (def.group === 'edges') ele.classes(def.classes ?? '');
        }
      });
      separateLabels(cy);
      return;
    }
    this.shape = shape;
    const selected = this.cy?.$(':selected').map((e) => e.id()) ?? [];
    this.cy?.destroy();
    const cy = cytoscape({
      container: this.canvas,
      elements: this.elements(graph),
      style: STYLE,
      layout: { name: 'preset', fit: true, padding: 40 },
      minZoom: 0.3,
      maxZoom: 2.5,
      autoungrabify: false,
      boxSelectionEnabled: false,
      selectionType: 'single',
    });
    if (cy.zoom() > 1.3) {
      cy.zoom(1.3);
      cy.center();
    }
    cy.on('tap', 'node[shape], edge', (event: EventObject) => {
      const target = event.target as cytoscape.SingularElementArgument;
      // The panel narrows the canvas: tell cytoscape once the layout has settled.
      requestAnimationFrame(() => cy.resize());
      if (target.isEdge()) {
        this.panel.showEdge(target.id(), target.data('source') as string, target.data('target') as string);
      } else {
        this.panel.showNode(target.id());
      }
    });
    cy.on('tap', (event: EventObject) => {
      if (event.target === cy) this.panel.close();
    });
    cy.on('dragfree', 'node', () => separateLabels(cy));
    separateLabels(cy);
    for (const id of selected) cy.getElementById(id).select();
    this.cy = cy;
    // Exposed for debugging in the browser console and for the browser tests.
    (window as unknown as { nephilia: { cy: Core } }).nephilia = { cy };
  }

  private applyHighlight(): void {
    const cy = this.cy;
    const outage = state.highlight;
    this.highlightBar.hidden = outage === null;
    if (!cy) return;
    cy.elements().removeClass('affected faded');
    if (!outage) return;
    const edges = cy.edges().filter((e) =>
      outage.affected_edges.some((a) => a.source === e.data('source') && a.target === e.data('target')),
    );
    const root = outage.root_cause?.node;
    cy.elements('node[shape], edge').addClass('faded');
    edges.removeClass('faded').addClass('affected');
    edges.connectedNodes().removeClass('faded');
    if (root) cy.getElementById(root).removeClass('faded').addClass('affected');
    const clear = el('button', { type: 'button', 'data-testid': 'clear-highlight' }, 'Clear');
    clear.addEventListener('click', () => {
      state.highlight = null;
      this.applyHighlight();
    });
    this.highlightBar.replaceChildren(
      el(
        'span',
        {},
        `Outage #${outage.id}: ${edges.length} affected edge${edges.length === 1 ? '' : 's'} highlighted`,
        outage.root_cause ? el('span', { class: 'muted' }, ` · ${outage.root_cause.evidence}`) : null,
      ),
      clear,
    );
  }

  /** Called when the view becomes visible: cytoscape needs the container's real size. */
  shown(): void {
    if (this.cy) {
      this.cy.resize();
      this.applyHighlight();
    }
  }
}

/**
 * A route's bends as cytoscape's segment weights (along source → target, node centres)
 * and distances (perpendicular, positive to the left of the direction of travel).
 */
function relativeBends(source: Position, target: Position, route: Position[]): { distances: number[]; weights: number[] } {
  const dx = target.x - source.x;
  const dy = target.y - source.y;
  const length2 = dx * dx + dy * dy || 1;
  const length = Math.sqrt(length2);
  return {
    weights: route.map((p) => ((p.x - source.x) * dx + (p.y - source.y) * dy) / length2),
    distances: route.map((p) => ((p.x - source.x) * -dy + (p.y - source.y) * dx) / length),
  };
}

/** Offsets tried for a label, in px along its edge: the middle first, then either side. */
const LABEL_SLIDES = [0, 40, -40, 80, -80, 120, -120];

/**
 * Slides each edge label along its edge to the first spot that covers neither a node nor
 * a label placed before it; edges that fan out from one node or cross put their labels
 * at the same middle otherwise.
 */
function separateLabels(cy: Core): void {
  cy.batch(() => cy.edges().data({ labelX: 0, labelY: 0 }));
  type Box = { x1: number; x2: number; y1: number; y2: number };
  const overlap = (a: Box, b: Box) =>
    Math.max(0, Math.min(a.x2, b.x2) - Math.max(a.x1, b.x1)) * Math.max(0, Math.min(a.y2, b.y2) - Math.max(a.y1, b.y1));
  const taken: Box[] = cy.nodes('[shape]').map((n) => n.boundingBox({ includeLabels: true }));
  const moves: [cytoscape.EdgeSingular, number, number][] = [];
  for (const edge of cy.edges().sort((a, b) => a.id().localeCompare(b.id()))) {
    const box = edge.boundingBox({ includeNodes: false, includeEdges: false, includeLabels: true });
    if (!(box.w > 0)) continue;
    // The leg of the edge the label sits on: the whole edge unless it bends.
    const mid = edge.midpoint();
    const points = [edge.sourceEndpoint(), ...(edge.hasClass('routed') ? (edge.segmentPoints() ?? []) : []), edge.targetEndpoint()];
    let leg = { dx: 0, dy: 0, room: 0 };
    let nearest = Number.POSITIVE_INFINITY;
    for (let i = 0; i + 1 < points.length; i++) {
      const [a, b] = [points[i], points[i + 1]];
      const length = Math.hypot(b.x - a.x, b.y - a.y);
      if (length === 0) continue;
      // Distance from the label to this leg's line, and how far it may slide along it.
      const off = Math.abs((mid.x - a.x) * (b.y - a.y) - (mid.y - a.y) * (b.x - a.x)) / length;
      const along = ((mid.x - a.x) * (b.x - a.x) + (mid.y - a.y) * (b.y - a.y)) / length;
      if (off < nearest) {
        nearest = off;
        leg = { dx: (b.x - a.x) / length, dy: (b.y - a.y) / length, room: Math.min(along, length - along) - 25 };
      }
    }
    let best = { x: 0, y: 0, cost: Number.POSITIVE_INFINITY };
    for (const slide of LABEL_SLIDES) {
      if (Math.abs(slide) > leg.room && slide !== 0) continue;
      const [x, y] = [leg.dx * slide, leg.dy * slide];
      const moved = { x1: box.x1 + x, x2: box.x2 + x, y1: box.y1 + y, y2: box.y2 + y };
      const cost = taken.reduce((sum, t) => sum + overlap(moved, t), 0);
      if (cost < best.cost) best = { x, y, cost };
      if (cost === 0) break;
    }
    taken.push({ x1: box.x1 + best.x, x2: box.x2 + best.x, y1: box.y1 + best.y, y2: box.y2 + best.y });
    if (best.x !== 0 || best.y !== 0) moves.push([edge, best.x, best.y]);
  }
  cy.batch(() => {
    for (const [edge, x, y] of moves) edge.data({ labelX: Math.round(x), labelY: Math.round(y) });
  });
}

function legend(): HTMLElement {
  const items = (['healthy', 'degraded', 'failing', 'idle'] as Health[]).map((h) =>
    el('span', { class: 'legend-item' }, el('i', { style: `background:${HEALTH_COLOURS[h]}` }), h),
  );
  return el('div', { class: 'legend', title: 'edge labels: rate · error % / p95 latency · tunnel setup p95; 🔒 mTLS (HBONE)' }, ...items);
}
