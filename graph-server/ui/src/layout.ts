// A deterministic layered layout: callers left of callees, one horizontal band per
// namespace so namespace boxes never overlap. Within a band it follows Sugiyama's
// scheme (https://en.wikipedia.org/wiki/Layered_graph_drawing): an edge that skips
// layers gets a placeholder in every layer it crosses, so it has a row of its own and
// never runs through a node; layers are ordered by barycentre sweeps that keep the
// ordering with the fewest crossings; rows then follow the neighbours so chains run
// straight.
import type { Edge, GraphNode } from './api';

export interface Position {
  x: number;
  y: number;
}

export interface Layout {
  positions: Map<string, Position>;
  /** Bends of the edges that skip layers, by edge id, from source to target. */
  routes: Map<string, Position[]>;
}

const COLUMN = 250;
const ROW = 100;
const BAND_GAP = 70;
/** Ordering sweeps (alternately against and along the edges); small graphs settle in a few. */
const SWEEPS = 8;

export function layered(nodes: GraphNode[], edges: Edge[]): Layout {
  const ids = nodes.map((n) => n.id);
  const known = new Set(ids);
  const calls = edges.filter((e) => e.source !== e.target && known.has(e.source) && known.has(e.target));
  const rank = ranks(ids, calls);

  // Bands: namespaces in order of their leftmost node, external endpoints last.
  const band = (n: GraphNode) => (n.kind === 'external' || !n.namespace ? '\uffff' : n.namespace);
  const bands = new Map<string, GraphNode[]>();
  for (const n of nodes) bands.set(band(n), [...(bands.get(band(n)) ?? []), n]);
  const minRank = (list: GraphNode[]) => Math.min(...list.map((n) => rank.get(n.id)!));
  const bandOrder = [...bands.entries()].sort(
    ([a, la], [b, lb]) => (a === '\uffff' ? 1 : 0) - (b === '\uffff' ? 1 : 0) || minRank(la) - minRank(lb) || a.localeCompare(b),
  );

  const positions = new Map<string, Position>();
  const routes = new Map<string, Position[]>();
  let top = 0;
  for (const [, list] of bandOrder) {
    const members = new Set(list.map((n) => n.id));
    const inside = calls.filter((e) => members.has(e.source) && members.has(e.target) && rank.get(e.target)! > rank.get(e.source)!);
    const { layers, links, chains } = withPlaceholders(list, inside, rank);
    order(layers, links);
    const row = rows(layers, links);
    const y = (item: string) => top + row.get(item)! * ROW;
    layers.forEach((layer, r) => {
      for (const item of layer) if (members.has(item)) positions.set(item, { x: r * COLUMN, y: y(item) });
    });
    for (const [edge, placeholders] of chains) {
      routes.set(
        edge,
        placeholders.map(([item, r]) => ({ x: r * COLUMN, y: y(item) })),
      );
    }
    top += (Math.max(0, ...row.values()) + 1) * ROW + BAND_GAP;
  }
  return { positions, routes };
}

/**
 * Layer of every node: the longest path from the entry points once back edges (found by
 * DFS) are set aside; an entry point then moves right next to its nearest callee, so a
 * caller of a deep service (a batch job, a legacy client) does not reach across the graph.
 */
function ranks(ids: string[], calls: Edge[]): Map<string, number> {
  const out = new Map<string, string[]>(ids.map((id) => [id, []]));
  for (const e of calls) if (!out.get(e.source)!.includes(e.target)) out.get(e.source)!.push(e.target);
  const state = new Map<string, 'open' | 'done'>();
  const dag = new Map<string, string[]>(ids.map((id) => [id, []]));
  const visit = (id: string) => {
    state.set(id, 'open');
    for (const next of out.get(id)!) {
      const s = state.get(next);
      if (s === 'open') continue;
      dag.get(id)!.push(next);
      if (s === undefined) visit(next);
    }
    state.set(id, 'done');
  };
  const indegree = new Map(ids.map((id) => [id, 0]));
  for (const e of calls) indegree.set(e.target, indegree.get(e.target)! + 1);
  for (const id of [...ids].sort((a, b) => indegree.get(a)! - indegree.get(b)! || a.localeCompare(b))) {
    if (!state.has(id)) visit(id);
  }
  const rank = new Map(ids.map((id) => [id, 0]));
  const callers = new Map(ids.map((id) => [id, 0]));
  for (const id of topological(ids, dag)) {
    for (const next of dag.get(id)!) {
      rank.set(next, Math.max(rank.get(next)!, rank.get(id)! + 1));
      callers.set(next, callers.get(next)! + 1);
    }
  }
  for (const id of ids) {
    const callees = dag.get(id)!;
    if (callers.get(id) === 0 && callees.length) rank.set(id, Math.min(...callees.map((t) => rank.get(t)!)) - 1);
  }
  return rank;
}

/** Layers of node ids and placeholders, the links between adjacent layers, and each long edge's placeholders. */
function withPlaceholders(list: GraphNode[], inside: Edge[], rank: Map<string, number>) {
  const layers: string[][] = [];
  const at = (r: number) => (layers[r] ??= []);
  for (const n of [...list].sort((a, b) => a.name.localeCompare(b.name))) at(rank.get(n.id)!).push(n.id);
  const links: [string, string][] = [];
  const chains = new Map<string, [string, number][]>();
  for (const e of inside) {
    const [from, to] = [rank.get(e.source)!, rank.get(e.target)!];
    let previous = e.source;
    const placeholders: [string, number][] = [];
    for (let r = from + 1; r < to; r++) {
      const item = `\u0000${e.id}\u0000${r}`;
      at(r).push(item);
      placeholders.push([item, r]);
      links.push([previous, item]);
      previous = item;
    }
    links.push([previous, e.target]);
    if (placeholders.length) chains.set(e.id, placeholders);
  }
  for (let r = 0; r < layers.length; r++) at(r);
  return { layers, links, chains };
}

/** For every item, the items linked into it (`before`) and out of it (`after`), in link order. */
function adjacency(links: [string, string][]): { before: Map<string, string[]>; after: Map<string, string[]> } {
  const before = new Map<string, string[]>();
  const after = new Map<string, string[]>();
  const add = (map: Map<string, string[]>, key: string, item: string) => {
    const list = map.get(key);
    if (list) list.push(item);
    else map.set(key, [item]);
  };
  for (const [s, t] of links) {
    add(before, t, s);
    add(after, s, t);
  }
  return { before, after };
}

/** Reorders every layer in place: barycentre sweeps, keeping the ordering with the fewest crossings. */
function order(layers: string[][], links: [string, string][]): void {
  const { before, after } = adjacency(links);
  const index = new Map<string, number>();
  const reindex = (layer: string[]) => layer.forEach((item, i) => index.set(item, i));
  layers.forEach(reindex);
  let best = layers.map((l) => [...l]);
  let fewest = crossings(layers, links, index);
  for (let sweep = 0; sweep < SWEEPS && fewest > 0; sweep++) {
    const down = sweep % 2 === 0;
    const neighbours = down ? before : after;
    const sequence = layers.map((_, r) => r);
    if (!down) sequence.reverse();
    for (const r of sequence) {
      const layer = layers[r];
      const bary = new Map(
        layer.map((item) => {
          const ns = neighbours.get(item) ?? [];
          // No neighbours on this side: stay where the item is.
          return [item, ns.length ? ns.reduce((sum, n) => sum + index.get(n)!, 0) / ns.length : index.get(item)!];
        }),
      );
      layer.sort((a, b) => bary.get(a)! - bary.get(b)! || index.get(a)! - index.get(b)!);
      reindex(layer);
    }
    const now = crossings(layers, links, index);
    if (now < fewest) {
      fewest = now;
      best = layers.map((l) => [...l]);
    }
  }
  best.forEach((layer, r) => {
    layers[r] = layer;
    reindex(layer);
  });
}

function crossings(layers: string[][], links: [string, string][], index: Map<string, number>): number {
  const layerOf = new Map<string, number>();
  layers.forEach((layer, r) => layer.forEach((item) => layerOf.set(item, r)));
  const byLayer = new Map<number, [number, number][]>();
  for (const [s, t] of links) {
    const r = layerOf.get(s)!;
    byLayer.set(r, [...(byLayer.get(r) ?? []), [index.get(s)!, index.get(t)!]]);
  }
  let count = 0;
  for (const pairs of byLayer.values()) {
    for (let i = 0; i < pairs.length; i++) {
      for (let j = i + 1; j < pairs.length; j++) {
        const [a, b] = [pairs[i], pairs[j]];
        if ((a[0] - b[0]) * (a[1] - b[1]) < 0) count++;
      }
    }
  }
  return count;
}

/**
 * A row for every item: each layer in order, as near the mean row of its neighbours as
 * the items above it allow, so chains run straight; the band then starts at row 0.
 */
function rows(layers: string[][], links: [string, string][]): Map<string, number> {
  const { before, after } = adjacency(links);
  const row = new Map<string, number>();
  for (const layer of layers) layer.forEach((item, i) => row.set(item, i));
  const place = (layer: string[], neighbours: Map<string, string[]>) => {
    let next = 0;
    for (const item of layer) {
      const ns = neighbours.get(item) ?? [];
      const wanted = ns.length ? Math.round(ns.reduce((sum, n) => sum + row.get(n)!, 0) / ns.length) : row.get(item)!;
      const r = Math.max(wanted, next);
      row.set(item, r);
      next = r + 1;
    }
  };
  for (let pass = 0; pass < 2; pass++) {
    for (const layer of layers) place(layer, before);
    for (const layer of [...layers].reverse()) place(layer, after);
  }
  const lowest = row.size ? Math.min(...row.values()) : 0;
  for (const [item, r] of row) row.set(item, r - lowest);
  return row;
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
