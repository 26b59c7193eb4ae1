// The browser test: serves examples/web from a loopback static server, opens the demo in
// headless Chromium with WebGPU on SwiftShader (no GPU needed), and asserts:
//  - the adapter is a real WebGPU adapter (none is a failure, not a skip);
//  - the in-page checks pass: every optimizer against the CPU reference, 8-bit state, clipping, skipped
//    NaN steps, async read-backs, a checkpoint saved to bytes and loaded back, a GPU error in
//    a step reported by the next call;
//  - training the digits MLP for N steps lowers the loss, and a step time is shown; so do
//    the page's other optimizers, clipped or not;
//  - no console error and no uncaught exception on the page;
//  - without WebGPU the page says so.
// It saves a screenshot of the trained page (SCREENSHOT, default docs/web_demo.png) and, with
// BENCH=1, prints the step-time table for BENCHMARKS.md.
//
// CHROMIUM (default /usr/bin/chromium) is the browser binary.
import { chromium } from "playwright-core";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..");
const repo = path.resolve(root, "..", "..");
const screenshot = process.env.SCREENSHOT || path.join(repo, "docs", "web_demo.png");
const STEPS = parseInt(process.env.STEPS || "330", 10);

const FLAGS = [
  "--headless=new",
  "--no-sandbox",
  "--enable-unsafe-webgpu",
  "--use-webgpu-adapter=swiftshader",
  "--enable-unsafe-swiftshader",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".wasm": "application/wasm",
  ".png": "image/png",
};

let failures = 0;
function ok(cond, what) {
  console.log(`${cond ? "ok  " : "FAIL"} ${what}`);
  if (!cond) failures++;
}

// A static server on 127.0.0.1 (any free port) for the files under examples/web.
function serve() {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://127.0.0.1");
    const file = path.join(root, path.normalize(decodeURIComponent(url.pathname)));
    if (!file.startsWith(root) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": TYPES[path.extname(file)] || "application/octet-stream" });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

function watch(page, errors) {
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => errors.push(`exception: ${e.message}`));
}

const server = await serve();
const base = `http://127.0.0.1:${server.address().port}`;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: false, // the flags say --headless=new
  args: FLAGS,
});
try {
  const context = await browser.newContext({ viewport: { width: 1000, height: 800 } });
  const page = await context.newPage();
  const errors = [];
  watch(page, errors);

  // 1. The in-page checks (they open their own device).
  await page.goto(`${base}/index.html`);
  await page.waitForFunction(() => window.wgpuOptim !== undefined, null, { timeout: 60_000 });
  const t0 = Date.now();
  const checks = JSON.parse(await page.evaluate(() => window.wgpuOptim.self_test()));
  console.log(`in-page checks (${((Date.now() - t0) / 1000).toFixed(1)} s):`);
  for (const c of checks) ok(c.ok, `${c.name}: ${c.detail}`);
  ok(checks.length >= 20, `${checks.length} checks ran`);
  const adapter = checks.find((c) => c.name === "adapter");
  ok(adapter && /BrowserWebGpu/.test(adapter.detail), `a browser WebGPU adapter: ${adapter && adapter.detail}`);

  // 2. The demo: Adam with clipping for STEPS steps.
  const t1 = Date.now();
  await page.goto(`${base}/index.html?optimizer=adam&clip=1&steps=${STEPS}&autostart=1`);
  await page.waitForFunction(
    () => ["done", "error"].includes(document.getElementById("status").dataset.state),
    null,
    { timeout: 300_000, polling: 250 }
  );
  const status = await page.$eval("#status", (s) => ({ ...s.dataset, text: s.textContent }));
  console.log(`demo (${((Date.now() - t1) / 1000).toFixed(1)} s): ${status.text}`);
  ok(status.state === "done", `the demo trained (${status.state})`);
  const first = parseFloat(status.lossFirst), last = parseFloat(status.lossLast);
  ok(last < 0.5 * first, `the loss fell: ${first} -> ${last}`);
  ok(parseFloat(status.testAccuracy) > 0.8, `test accuracy ${status.testAccuracy} > 0.8`);
  ok(status.optimizerSteps === String(STEPS), `optimizer step count ${status.optimizerSteps} = ${STEPS}`);
  const stepText = await page.$eval("#step-time", (e) => e.textContent);
  const stepMs = await page.$eval("#step-time", (e) => parseFloat(e.dataset.ms));
  ok(/^\d+\.\d+ ms$/.test(stepText) && stepMs > 0, `a step time is shown: ${stepText}`);
  const shown = await page.$eval("#adapter", (e) => ({ text: e.textContent, wgpu: e.dataset.wgpu }));
  ok(/BrowserWebGpu/.test(shown.wgpu) && shown.text.length > 0, `the page shows the adapter: ${shown.text} (${shown.wgpu})`);
  fs.mkdirSync(path.dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);

  // 3. The page's other optimizers, with and without clipping: the loss falls with each.
  for (const [name, clip] of [["adamw", 0], ["sgd", 1], ["rmsprop", 0], ["adagrad", 1]]) {
    await page.goto(`${base}/index.html?optimizer=${name}&clip=${clip}&steps=220&autostart=1`);
    await page.waitForFunction(
      () => ["done", "error"].includes(document.getElementById("status").dataset.state),
      null,
      { timeout: 300_000, polling: 250 }
    );
    const s = await page.$eval("#status", (e) => ({ ...e.dataset, text: e.textContent }));
    const [a, b] = [parseFloat(s.lossFirst), parseFloat(s.lossLast)];
    ok(s.state === "done" && b < 0.6 * a, `${name}${clip ? " clipped" : ""}: loss ${a} -> ${b} in 220 steps (${s.state})`);
  }

  // 4. Optional: the step-time table (BENCHMARKS.md).
  if (process.env.BENCH === "1") {
    const rows = await page.evaluate(async () => {
      const ROWS = [["adam", false], ["adam", true], ["sgd", false], ["rmsprop", false], ["adagrad", false], ["adamw", false]];
      const SIZES = [1 << 12, 1 << 16, 1 << 20];
      const out = [];
      const steps = (n) => (n >= 1 << 20 ? 20 : 100);
      // A discarded pass first: the first dispatches of a page pay for the browser's warm-up.
      for (const n of SIZES) await window.wgpuOptim.bench_step("adam", n, false, steps(n));
      for (const [kind, clip] of ROWS)
        for (const n of SIZES) {
          const runs = [];
          for (let r = 0; r < 5; r++) runs.push(await window.wgpuOptim.bench_step(kind, n, clip, steps(n)));
          out.push([kind, n, clip, runs.sort((a, b) => a - b)[2]]);
        }
      return out;
    });
    console.log("step time, median of 5 runs:\n| optimizer | elements | clipped | ms per step |\n| --- | ---: | --- | ---: |");
    for (const [k, n, c, ms] of rows) console.log(`| ${k} | ${n} | ${c} | ${ms.toFixed(3)} |`);
  }
  ok(errors.length === 0, `no console errors or exceptions${errors.length ? ": " + errors.join("; ") : ""}`);

  // 5. A browser without WebGPU: the page says so (navigator.gpu hidden before any script).
  const bare = await context.newPage();
  await bare.addInitScript(() => {
    Object.defineProperty(Navigator.prototype, "gpu", { get: () => undefined, configurable: true });
  });
  await bare.goto(`${base}/index.html`);
  await bare.waitForFunction(() => document.getElementById("status").dataset.state !== "idle", null, {
    timeout: 60_000,
  });
  const noGpu = await bare.$eval("#message", (m) => ({ cls: m.className, text: m.textContent }));
  const state = await bare.$eval("#status", (s) => s.dataset.state);
  ok(state === "no-webgpu" && noGpu.cls === "error" && /has no WebGPU/.test(noGpu.text), `no WebGPU is said: "${noGpu.text.slice(0, 60)}…"`);
} finally {
  await browser.close();
  server.close();
}
console.log(failures === 0 ? "browser test passed" : `browser test: ${failures} failed`);
process.exit(failures === 0 ? 0 : 1);
