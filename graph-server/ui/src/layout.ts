// A deterministic layered layout: callers left of callees (longest path from the
// entry points), one horizontal band per namespace so namespace boxes never overlap.
import type { Edge, GraphNode } from './api';

export interface Position {
  x: number;
  y: number;
}

const COLUMN = 250;
const ROW = 100;
const BAND_GAP = 70;

export function layered(nodes: GraphNode[], edges: Edge[]): Map<string, Position> {
  const ids = nodes.map((n) => n.id);
  const out = new Map<string, string[]>(ids.map((id) => [id, []]));
  for (const e of edges) if (e.source !== e.target) out.get(e.source)?.push(e.target);

  // Drop back edges (DFS) so the rest is acyclic, then rank by longest path.
  const state = new Map<string, 'open' | 'done'>();
  const dag = new Map<string, string[]>(ids.map((id) => [id, []]));
  const visit = (id: string) => {
    state.set(id, 'open');
    for (const next of out.get(id) ?? []) {
      const s = state.get(next);
      if (s === 'open') continue;
      dag.get(id)!.push(next);
      if (s === undefined) visit(next);
    }
    state.set(id, 'done');
  };
  const indegree = new Map(ids.map((id) => [id, 0]));
  for (const e of edges) if (e.source !== e.target) indegree.set(e.target, (indegree.get(e.target) ?? 0) + 1);
  for (const id of [...ids].sort((a, b) => (indegree.get(a) ?? 0) - (indegree.get(b) ?? 0) || a.localeCompare(b))) {
    if (!state.has(id)) visit(id);
  }
  const rank = new Map(ids.map((id) => [id, 0]));
  const order = topological(ids, dag);
  for (const id of order) {
    for (const next of dag.get(id) ?? []) rank.set(next, Math.max(rank.get(next)!, rank.get(id)! + 1));
  }

  // Bands: namespaces in order of their leftmost node, external endpoints last.
  const band = (n: GraphNode) => (n.kind === 'external' || !n.namespace ? '\uffff' : n.namespace);
  const bands = new Map<string, GraphNode[]>();
  for (const n of nodes) {
    const list = bands.get(band(n)) ?? [];
    list.push(n);
    bands.set(band(n), list);
  }
  const minRank = (list: GraphNode[]) => Math.min(...list.map((n) => rank.get(n.id)!));
  const bandOrder = [...bands.entries()].sort(
    ([a, la], [b, lb]) => (a === '\uffff' ? 1 : 0) - (b === '\uffff' ? 1 : 0) || minRank(la) - minRank(lb) || a.localeCompare(b),
  );

  const positions = new Map<string, Position>();
  let top = 0;
  for (const [, list] of bandOrder) {
    const columns = new Map<number, GraphNode[]>();
    for (const n of list) {
      const r = rank.get(n.id)!;
      columns.set(r, [...(columns.get(r) ?? []), n]);
    }
    let rows = 0;
    for (const [r, column] of [...columns.entries()].sort(([a], [b]) => a - b)) {
      // Barycentre of already placed callers keeps edges short and uncrossed.
      const bary = (n: GraphNode) => {
        const ys = edges.filter((e) => e.target === n.id && positions.has(e.source)).map((e) => positions.get(e.source)!.y);
        return ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : Number.POSITIVE_INFINITY;
      };
      column.sort((a, b) => bary(a) - bary(b) || a.name.localeCompare(b.name));
      column.forEach((n, i) => positions.set(n.id, { x: r * COLUMN, y: top + i * ROW }));
      rows = Math.max(rows, column.length);
    }
    top += rows * ROW + BAND_GAP;
  }
  return positions;
}

function topological(ids: string[], dag: Map<string, string[]>): string[] {
  const indegree = new Map(ids.map((id) => [id, 0]));
  for (const targets of dag.values()) for (const t of targets) indegree.set(t, indegree.get(t)! + 1);
  const queue = ids.filter((id) => indegree.get(id) === 0).sort();
  const order: string[] = [];
  while (queue.length) {
    const id = queue.shift()!;
    order.push(id);
    for (const t of dag.get(id) ?? []) {
      indegree.set(t, indegree.get(t)! - 1);
      if (indegree.get(t) === 0) queue.push(t);
    }
  }
  return order;
}
