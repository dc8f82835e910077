import type { Health } from './api';

// Number, duration and time formatting shared by the views.

/** 1234 → "1.2k", 0.5 → "0.5", 12 → "12". */
export function count(n: number): string {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(0)}k`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(Math.round(n));
}

/** A rate per second with two significant digits: 0.033, 1.2, 15, 230. */
export function rate(perSecond: number): string {
  if (perSecond === 0) return '0';
  if (perSecond >= 100) return perSecond.toFixed(0);
  if (perSecond >= 10) return perSecond.toFixed(1).replace(/\.0$/, '');
  if (perSecond >= 1) return perSecond.toFixed(2).replace(/\.?0+$/, '');
  return perSecond.toPrecision(2);
}

/** 0.0123 → "1.2 %", 0 → "0 %", 1 → "100 %". */
export function percent(ratio: number): string {
  const p = ratio * 100;
  if (p === 0) return '0 %';
  if (p >= 10 || Number.isInteger(p)) return `${p.toFixed(0)} %`;
  return `${p.toFixed(1)} %`;
}

/** Microseconds → "850 µs", "12 ms", "1.4 ms", "2.3 s". */
export function micros(us: number): string {
  if (us < 1000) return `${Math.round(us)} µs`;
  const ms = us / 1000;
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
}

export function bytes(n: number): string {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(1)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

/** Unix nanoseconds → local "12:03:11". */
export function clock(ns: number): string {
  return new Date(ns / 1e6).toLocaleTimeString([], { hour12: false });
}

/** Unix nanoseconds → "2026-01-01 12:03:11". */
export function dateTime(ns: number): string {
  const d = new Date(ns / 1e6);
  const pad = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(ns)}`;
}

/** "3m ago", "45s ago". */
export function ago(ns: number, nowMs = Date.now()): string {
  const s = Math.max(0, Math.round(nowMs / 1000 - ns / 1e9));
  if (s < 90) return `${s}s ago`;
  if (s < 5400) return `${Math.round(s / 60)}m ago`;
  return `${(s / 3600).toFixed(1)}h ago`;
}

/** The short name of a node id: "workload:shop:payments" → "payments". */
export function shortName(id: string): string {
  const parts = id.split(':');
  if (parts[0] === 'external') return parts.slice(1).join(':');
  return parts[parts.length - 1] ?? id;
}

/** Creates an element with attributes and children. */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | undefined> = {},
  ...children: (Node | string | null | undefined)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined) continue;
    if (k === 'class') node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c);
  }
  return node;
}

export const ERROR_KINDS = [
  'http_5xx',
  'grpc_error',
  'refused',
  'reset',
  'timeout',
  'unreachable',
  'tunnel_failed',
] as const;

/** Colour per service name, stable across views (Jaeger-like palette). */
const PALETTE = [
  '#4e79a7', '#f28e2b', '#59a14f', '#b07aa1', '#76b7b2',
  '#edc948', '#ff9da7', '#9c755f', '#17becf', '#bab0ac',
];
export function serviceColour(name: string): string {
  if (name === 'ztunnel') return '#8957e5';
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length] ?? '#4e79a7';
}

export const HEALTH_COLOURS: Record<Health, string> = {
  healthy: '#2da44e',
  degraded: '#d4a72c',
  failing: '#cf222e',
  idle: '#8c959f',
};
