// Browser test of the web UI against a real nephilia-server, run by
// graph-server/tests/browser.rs (a server fed a recorded shop) and
// graph-server/tests/live_mesh.rs (the agent observing the testbed's live mesh). Uses
// playwright-core with the system Chromium (never downloads a browser). Environment:
// NEPHILIA_URL, NEPHILIA_TOKEN, CHROMIUM, ARTIFACTS (screenshot directory),
// USER_DATA_DIR (fresh profile), EXPECT (JSON, what the caller knows the UI must show:
// nodes, edges, boxes, clicked_edge {source, target, title, label}, requests, error_rate,
// errors, recent_failure, outage {count, root_cause, evidence, failures, peak_error_rate,
// affected_edges}, trace {service, operation, first_spans, servers}; strings named as
// patterns are regular expressions).
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import path from 'node:path';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const url = env('NEPHILIA_URL');
const token = env('NEPHILIA_TOKEN');
const artifacts = env('ARTIFACTS');
const expect = JSON.parse(env('EXPECT'));
const started = Date.now();
const step = (what) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${what}`);

const context = await chromium.launchPersistentContext(env('USER_DATA_DIR'), {
  executablePath: env('CHROMIUM'),
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
  viewport: { width: 1366, height: 768 },
  deviceScaleFactor: 1,
});
const problems = [];
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(10_000);
  page.on('console', (msg) => {
    if (msg.type() === 'error' || msg.type() === 'warning') problems.push(`console ${msg.type()}: ${msg.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));

  // Without a token the API answers 401 and the UI asks for one.
  step('open without a token');
  await page.goto(url);
  await page.getByTestId('auth-prompt').waitFor();
  assert.match(await page.getByTestId('auth-prompt').innerText(), /API token/);
  // That 401 is expected; Chromium logs every failed response as a console error.
  const expected401 = (p) => /401/.test(p);
  assert.ok(problems.every(expected401), problems.join('\n'));
  problems.length = 0;

  step('save the token');
  await page.getByTestId('token-input').fill(token);
  await page.getByTestId('token-save').click();
  await page.getByTestId('auth-prompt').waitFor({ state: 'hidden' });
  assert.equal(await page.evaluate(() => localStorage.getItem('nephilia.token')), token);

  // Topology: exactly the nodes and edges fed.
  step('topology');
  await page.waitForFunction((n) => window.nephilia?.cy?.nodes('[shape]').length === n, expect.nodes.length);
  const graph = await page.evaluate(() => {
    const cy = window.nephilia.cy;
    return {
      nodes: cy.nodes('[shape]').map((n) => n.id()).sort(),
      edges: cy.edges().map((e) => e.id()).sort(),
      boxes: cy.nodes('.namespace-box').map((n) => n.data('label')).sort(),
      labels: Object.fromEntries(cy.edges().map((e) => [e.id(), e.data('label')])),
      health: Object.fromEntries(cy.nodes('[shape]').map((n) => [n.id(), n.data('health')])),
    };
  });
  assert.deepEqual(graph.nodes, [...expect.nodes].sort());
  assert.deepEqual(graph.edges, [...expect.edges].sort());
  assert.deepEqual(graph.boxes, expect.boxes);
  assert.match(await page.getByTestId('topology-status').innerText(), new RegExp(`^${expect.nodes.length} nodes, ${expect.edges.length} edges`));
  const clickedId = `${expect.clicked_edge.source}->${expect.clicked_edge.target}`;
  // The label has the rate, the error share, the lock for mTLS and the tunnel setup p95.
  assert.match(graph.labels[clickedId], new RegExp(expect.clicked_edge.label, 'u'));
  await page.screenshot({ path: path.join(artifacts, 'topology.png') });

  // Click the edge where it is drawn: the side panel shows what was fed.
  step('click an edge');
  const point = await page.evaluate((id) => {
    const cy = window.nephilia.cy;
    const edge = cy.getElementById(id);
    const box = cy.container().getBoundingClientRect();
    // A point on the line a third of the way along, away from the label in the middle.
    const s = edge.sourceEndpoint();
    const t = edge.targetEndpoint();
    const p = { x: s.x + (t.x - s.x) / 3, y: s.y + (t.y - s.y) / 3 };
    const zoom = cy.zoom();
    const pan = cy.pan();
    return { x: box.left + p.x * zoom + pan.x, y: box.top + p.y * zoom + pan.y };
  }, clickedId);
  await page.mouse.click(point.x, point.y);
  const panel = page.getByTestId('side-panel');
  await panel.waitFor();
  assert.equal(await page.getByTestId('panel-title').innerText(), expect.clicked_edge.title);
  await page.getByTestId('stat-requests').waitFor();
  assert.equal(await page.getByTestId('stat-requests').innerText(), expect.requests);
  assert.equal(await page.getByTestId('stat-error-rate').innerText(), expect.error_rate);
  assert.match(await page.getByTestId('stat-errors').innerText(), new RegExp(expect.errors));
  assert.equal(await page.getByTestId('stat-mtls').innerText(), '100 %');
  for (const chart of ['chart-rate', 'chart-errors', 'chart-latency', 'chart-tunnel', 'chart-reuse']) {
    await page.getByTestId(chart).locator('path').first().waitFor();
  }
  await page.getByTestId('failure-row').first().waitFor();
  assert.match(await page.getByTestId('recent-failures').innerText(), new RegExp(expect.recent_failure));
  await page.screenshot({ path: path.join(artifacts, 'edge-panel.png') });

  // Outages: the incident, its root cause and evidence.
  step('outages');
  await page.getByTestId('nav-outages').click();
  const bar = page.locator('[data-testid^="outage-bar-"]');
  await bar.first().waitFor();
  assert.equal(await bar.count(), expect.outage.count);
  await bar.first().click();
  assert.equal(await page.getByTestId('root-cause-node').innerText(), expect.outage.root_cause);
  assert.match(await page.getByTestId('root-cause-evidence').innerText(), new RegExp(expect.outage.evidence));
  for (const failures of expect.outage.failures) {
    assert.match(await page.getByTestId('outage-failures').innerText(), new RegExp(failures));
  }
  assert.equal(await page.getByTestId('peak-error-rate').innerText(), expect.outage.peak_error_rate);
  await page.screenshot({ path: path.join(artifacts, 'outage.png') });

  step('outage in the topology');
  await page.getByTestId('show-in-topology').click();
  await page.getByTestId('outage-highlight').waitFor();
  await page.waitForFunction(() => window.nephilia.cy.edges('.affected').length > 0);
  const affected = await page.evaluate(() => window.nephilia.cy.edges('.affected').map((e) => e.id()).sort());
  assert.deepEqual(affected, [...expect.outage.affected_edges].sort());
  await page.screenshot({ path: path.join(artifacts, 'outage-in-topology.png') });

  // Traces: search, open one, see client → tunnel → server.
  step('traces');
  await page.getByTestId('nav-traces').click();
  await page.getByTestId('trace-service').fill(expect.trace.service);
  await page.getByTestId('trace-operation').fill(expect.trace.operation);
  await page.getByTestId('trace-find').click();
  const row = page.getByTestId('trace-row');
  await page.waitForFunction((op) => {
    const rows = [...document.querySelectorAll('[data-testid="trace-row"]')];
    return rows.length > 0 && rows.every((r) => r.textContent.includes(op));
  }, expect.trace.operation);
  // The newest healthy trace: the whole chain.
  await row.filter({ hasNotText: 'error' }).first().click();
  await page.getByTestId('trace-timeline').waitFor();
  assert.ok((await page.getByTestId('trace-title').innerText()).startsWith(`${expect.trace.service}: ${expect.trace.operation}`));
  const spans = await page.locator('[data-testid="trace-timeline"] .span-row').evaluateAll((rows) =>
    rows.map((r) => `${r.dataset.testid}:${r.querySelector('.span-name strong').textContent}`),
  );
  assert.deepEqual(spans.slice(0, expect.trace.first_spans.length), expect.trace.first_spans);
  for (const service of expect.trace.servers) {
    assert.ok(spans.includes(`span-server:${service}`), `${service} server span in ${spans}`);
  }
  assert.match(await page.getByTestId('span-detail').innerText(), /tunnel_setup_us/);
  await page.screenshot({ path: path.join(artifacts, 'trace.png') });

  assert.deepEqual(problems, [], 'no console errors or warnings');
  step('done');
} finally {
  await context.close();
}
