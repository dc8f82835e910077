// Small SVG line charts for the side panel: one series over time, a y axis with its
// maximum, the latest value, and a hover read-out.
import { clock } from './format';

const SVG = 'http://www.w3.org/2000/svg';

export interface Point {
  t_ns: number;
  value: number | null;
}

export interface ChartOptions {
  title: string;
  testid: string;
  colour: string;
  format: (v: number) => string;
  /** Fixed upper bound (e.g. 1 for ratios); otherwise the data's maximum. */
  max?: number;
  /** Window to draw: points outside are dropped, gaps stay empty. */
  from_ns: number;
  to_ns: number;
}

function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number>,
): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

export function lineChart(points: Point[], o: ChartOptions): HTMLElement {
  const W = 300;
  const H = 64;
  const pad = { l: 4, r: 4, t: 6, b: 14 };
  const wrap = document.createElement('div');
  wrap.className = 'chart';
  wrap.dataset.testid = o.testid;
  const values = points.map((p) => p.value).filter((v): v is number => v !== null);
  const latest = [...points].reverse().find((p) => p.value !== null)?.value;
  const head = document.createElement('div');
  head.className = 'chart-head';
  const title = document.createElement('span');
  title.textContent = o.title;
  const now = document.createElement('span');
  now.className = 'chart-value';
  now.textContent = latest === undefined || latest === null ? '–' : o.format(latest);
  head.append(title, now);
  wrap.append(head);

  const max = o.max ?? Math.max(...values, 0);
  const top = max > 0 ? max : 1;
  const span = Math.max(1, o.to_ns - o.from_ns);
  const x = (t: number) => pad.l + ((t - o.from_ns) / span) * (W - pad.l - pad.r);
  const y = (v: number) => pad.t + (1 - v / top) * (H - pad.t - pad.b);
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, width: '100%', height: H, role: 'img' });
  chart.append(svg('line', { x1: pad.l, x2: W - pad.r, y1: y(0), y2: y(0), class: 'axis' }));
  chart.append(svg('line', { x1: pad.l, x2: W - pad.r, y1: y(top), y2: y(top), class: 'grid' }));
  const maxLabel = svg('text', { x: W - pad.r, y: pad.t + 8, 'text-anchor': 'end', class: 'tick' });
  maxLabel.textContent = max > 0 ? o.format(max) : '';
  chart.append(maxLabel);
  for (const [t, anchor] of [
    [o.from_ns, 'start'],
    [o.to_ns, 'end'],
  ] as const) {
    const label = svg('text', { x: x(t), y: H - 2, 'text-anchor': anchor, class: 'tick' });
    label.textContent = clock(t);
    chart.append(label);
  }

  // Consecutive points form one segment; a null value breaks the line.
  let d = '';
  let area = '';
  let run: [number, number][] = [];
  const flush = () => {
    if (run.length === 0) return;
    d += run.map(([px, py], i) => `${i ? 'L' : 'M'}${px.toFixed(1)},${py.toFixed(1)}`).join('');
    const first = run[0]!;
    const last = run[run.length - 1]!;
    area += `M${first[0].toFixed(1)},${y(0)}` + run.map(([px, py]) => `L${px.toFixed(1)},${py.toFixed(1)}`).join('') + `L${last[0].toFixed(1)},${y(0)}Z`;
    run = [];
  };
  for (const p of points) {
    if (p.t_ns < o.from_ns || p.t_ns > o.to_ns) continue;
    if (p.value === null) flush();
    else run.push([x(p.t_ns), y(p.value)]);
  }
  flush();
  chart.append(svg('path', { d: area, fill: o.colour, 'fill-opacity': 0.15, stroke: 'none' }));
  chart.append(svg('path', { d, fill: 'none', stroke: o.colour, 'stroke-width': 1.5 }));
  for (const p of points) {
    if (p.value === null || p.t_ns < o.from_ns || p.t_ns > o.to_ns) continue;
    const dot = svg('circle', { cx: x(p.t_ns), cy: y(p.value), r: 1.8, fill: o.colour });
    const tip = svg('title', {});
    tip.textContent = `${clock(p.t_ns)}  ${o.format(p.value)}`;
    dot.append(tip);
    chart.append(dot);
  }
  if (values.length === 0) {
    const empty = svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'tick' });
    empty.textContent = 'no data in window';
    chart.append(empty);
  }
  wrap.append(chart);
  return wrap;
}
