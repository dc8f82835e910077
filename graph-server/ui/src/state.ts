// What the views share: the topology's controls and the outage picked for highlighting.
import type { Level, Outage } from './api';

export const WINDOWS = ['1m', '5m', '15m', '1h'] as const;
export type Window = (typeof WINDOWS)[number];

export const WINDOW_SECONDS: Record<Window, number> = { '1m': 60, '5m': 300, '15m': 900, '1h': 3600 };

export interface State {
  window: Window;
  level: Level;
  namespace: string;
  live: boolean;
  /** Outage whose edges the topology highlights. */
  highlight: Outage | null;
}

export const state: State = {
  window: '5m',
  level: 'workload',
  namespace: '',
  live: true,
  highlight: null,
};

/** The smallest window that reaches back to `ns`, or the largest. */
export function windowCovering(ns: number, nowMs = Date.now()): Window {
  const ago = nowMs / 1000 - ns / 1e9;
  return WINDOWS.find((w) => WINDOW_SECONDS[w] > ago + 10) ?? '1h';
}
