// The graph server's HTTP API (graph-server/README.md), with the bearer token from
// localStorage. A 401 raises `Unauthorized` so the shell can ask for a token.

export type Health = 'idle' | 'healthy' | 'degraded' | 'failing';
export type Level = 'workload' | 'service' | 'namespace';

export interface Percentiles {
  p50_us: number;
  p95_us: number;
  p99_us: number;
  count: number;
}

export interface ErrorCounts {
  http_5xx: number;
  grpc_error: number;
  refused: number;
  reset: number;
  timeout: number;
  unreachable: number;
  tunnel_failed: number;
}

export interface Summary {
  protocol: string;
  connections: number;
  requests: number;
  bytes_sent: number;
  bytes_received: number;
  connections_per_second: number;
  requests_per_second: number;
  bytes_sent_per_second: number;
  bytes_received_per_second: number;
  errors: ErrorCounts;
  error_rate: number;
  latency: Percentiles | null;
  latency_kind: 'request' | 'connect' | null;
  tunnel_setup: Percentiles | null;
  pool_reuse_ratio: number | null;
  mtls_share: number | null;
  health: Health;
}

export interface Edge extends Summary {
  id: string;
  source: string;
  target: string;
}

export interface GraphNode {
  id: string;
  kind: 'workload' | 'service' | 'namespace' | 'external';
  name: string;
  namespace: string | null;
  health: Health;
  inbound: Summary | null;
}

export interface Graph {
  level: Level;
  namespace: string | null;
  from_ns: number;
  to_ns: number;
  window_seconds: number;
  nodes: GraphNode[];
  edges: Edge[];
}

export interface NodeDetail {
  node: GraphNode;
  outbound: Summary | null;
  bucket_seconds: number;
  incoming: Edge[];
  outgoing: Edge[];
  series: { start_ns: number; inbound: Summary | null; outbound: Summary | null }[];
}

export interface EdgeDetail {
  edge: Edge;
  bucket_seconds: number;
  series: (Summary & { start_ns: number })[];
}

export interface Outage {
  id: number;
  start_ns: number;
  end_ns: number | null;
  start: string;
  end: string | null;
  open: boolean;
  affected_edges: { source: string; target: string }[];
  affected_workloads: string[];
  failures: ErrorCounts;
  peak_error_rate: number;
  root_cause: {
    node: string;
    kind: keyof ErrorCounts;
    rate: number;
    since_ns: number;
    evidence: string;
  } | null;
}

export interface TraceSummary {
  trace_id: string;
  root_service: string;
  root_operation: string;
  start_ns: number;
  duration_us: number;
  span_count: number;
  error_count: number;
  services: string[];
}

export interface Span {
  trace_id: string;
  span_id: string;
  parent_span_id: string | null;
  kind: 'client' | 'server' | 'tunnel';
  service: string;
  operation: string;
  start_ns: number;
  duration_us: number;
  error: boolean;
  node: string;
  attributes: Record<string, string>;
}

export interface Trace extends TraceSummary {
  spans: Span[];
}

export interface Peer {
  workload: string;
  namespace: string;
  pod: string;
  ip: string;
  service: string;
  identity: string;
}

/** A record from /api/v1/flows; fields depend on `kind`. */
export interface FlowRecord {
  kind: 'connection' | 'mesh_flow' | 'request';
  start_ns: number;
  end_ns: number | null;
  side?: string;
  source?: Peer;
  destination?: Peer;
  outcome?: string;
  method?: string;
  path?: string;
  status?: number | null;
  grpc_status?: number | null;
  latency_us?: number;
  protocol?: string;
  node?: string;
  original_destination?: string;
}

export class Unauthorized extends Error {
  constructor() {
    super('the server needs an API token');
  }
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const TOKEN_KEY = 'nephilia.token';

export function token(): string {
  return localStorage.getItem(TOKEN_KEY) ?? '';
}

export function setToken(value: string): void {
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

type Params = Record<string, string | number | boolean | undefined | null>;

/** GET `path` with `params`; empty and null parameters are left out. */
export async function get<T>(path: string, params: Params = {}): Promise<T> {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') query.set(k, String(v));
  }
  const qs = query.toString();
  const headers: Record<string, string> = { Accept: 'application/json' };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  const response = await fetch(`/api/v1/${path}${qs ? `?${qs}` : ''}`, { headers });
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = ((await response.json()) as { error?: string }).error ?? message;
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(response.status, message);
  }
  return (await response.json()) as T;
}
