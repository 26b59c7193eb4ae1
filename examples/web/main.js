// The demo page: trains the digits MLP with wgpu-optim's fused optimizers on WebGPU (the wasm
// module built by build.sh), draws the loss curve live and shows the time per optimizer step.
// URL options (used by the browser test): ?optimizer=adam&clip=1&steps=220&autostart=1
import init, { Demo, has_webgpu, self_test, bench_step } from "./pkg/wgpu_optim_web.js";

const $ = (id) => document.getElementById(id);
const status = $("status");
const message = $("message");

function setStatus(state, text) {
  status.dataset.state = state;
  status.textContent = text;
}

function showMessage(kind, html) {
  message.className = kind;
  message.innerHTML = html;
}

// Browsers that ship WebGPU: Chrome and Edge 113+ (Windows, macOS, ChromeOS; Android 121+),
// Firefox 141+ on Windows, Safari 26+. Elsewhere navigator.gpu is missing or gives no adapter.
const NO_WEBGPU =
  "<b>This browser has no WebGPU</b>, so the demo cannot run here. " +
  "Use a browser that ships it: Chrome or Edge 113 or later (Windows, macOS, ChromeOS; " +
  "Android 121+), Firefox 141+ on Windows, or Safari 26+. On Linux, Chrome needs " +
  "<code>--enable-unsafe-webgpu</code> (or chrome://flags) for now.";

const fmt = (x, digits = 3) => (Number.isFinite(x) ? x.toFixed(digits) : "–");

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
}

// The loss curve: log-scale y, steps on x.
function draw(points, total) {
  const c = $("curve");
  const g = c.getContext("2d");
  const W = c.width, H = c.height, L = 80, R = 20, T = 20, B = 50;
  g.clearRect(0, 0, W, H);
  g.fillStyle = "#fff";
  g.fillRect(0, 0, W, H);
  g.font = "15px system-ui, sans-serif";
  g.fillStyle = "#1d2125";
  g.strokeStyle = "#8a949e";
  g.beginPath();
  g.moveTo(L, T);
  g.lineTo(L, H - B);
  g.lineTo(W - R, H - B);
  g.stroke();
  g.fillText("step", W - R - 30, H - 12);
  g.save();
  g.translate(22, (T + H - B) / 2);
  g.rotate(-Math.PI / 2);
  g.textAlign = "center";
  g.fillText("training loss (log scale)", 0, 0);
  g.restore();
  if (points.length === 0) return;
  const ys = points.map((p) => Math.log10(Math.max(p[1], 1e-4)));
  let lo = Math.floor(Math.min(...ys) * 2) / 2, hi = Math.ceil(Math.max(...ys) * 2) / 2;
  if (hi - lo < 0.5) hi = lo + 0.5;
  const x = (s) => L + ((W - L - R) * s) / Math.max(total, 1);
  const y = (v) => H - B - ((H - B - T) * (v - lo)) / (hi - lo);
  g.fillStyle = "#5a6470";
  g.strokeStyle = "#e4e8ec";
  for (let v = lo; v <= hi + 1e-9; v += 0.5) {
    g.beginPath();
    g.moveTo(L, y(v));
    g.lineTo(W - R, y(v));
    g.stroke();
    g.fillText(Math.pow(10, v).toPrecision(2), 36, y(v) + 5);
  }
  for (let i = 0; i <= 4; i++) {
    const s = Math.round((total * i) / 4);
    g.fillText(String(s), x(s) - 10, H - B + 20);
  }
  g.strokeStyle = "#1f6feb";
  g.lineWidth = 2.5;
  g.beginPath();
  points.forEach((p, i) => (i ? g.lineTo(x(p[0]), y(ys[i])) : g.moveTo(x(p[0]), y(ys[i]))));
  g.stroke();
  g.lineWidth = 1;
}

let running = false;

// What the browser says its adapter is (vendor, architecture), for the page only: wgpu's
// adapter info in a browser has the description alone, often empty.
async function adapterLabel() {
  try {
    const a = await navigator.gpu.requestAdapter();
    const i = a && a.info;
    const label = i ? [i.vendor, i.architecture, i.description].filter(Boolean).join(" ") : "";
    return label || "WebGPU adapter";
  } catch {
    return "WebGPU adapter";
  }
}

async function train() {
  if (running) return;
  running = true;
  $("start").disabled = true;
  const name = $("optimizer").value;
  const label = $("optimizer").selectedOptions[0].textContent.replace(/ \(.*\)$/, "");
  const clip = $("clip").checked;
  const total = Math.max(22, parseInt($("steps").value, 10) || 660);
  const points = [];
  const stepTimes = [];
  try {
    setStatus("running", `Building the network and ${name} on the GPU…`);
    const demo = await Demo.create(name, clip, 7);
    $("adapter").textContent = await adapterLabel();
    $("adapter").dataset.wgpu = demo.adapter();
    $("test-acc").textContent = "–";
    const perTick = 11; // iterations between two loss read-backs (half an epoch)
    let done = 0;
    let tick = 0;
    while (done < total) {
      const n = Math.min(perTick, total - done);
      const t0 = performance.now();
      demo.train(n); // records and submits; never waits
      const [loss] = await demo.stats(); // the one read-back of the tick
      const dt = (performance.now() - t0) / n;
      done += n;
      points.push([done, loss]);
      $("step").textContent = `${done} / ${total}`;
      $("loss").textContent = fmt(loss, 4);
      $("iter-time").textContent = `${fmt(dt, 2)} ms`;
      if (tick % 4 === 0) {
        // 20 fused steps on tensors shaped like the network's, back to back, one read-back.
        stepTimes.push(await demo.step_time(20));
        $("step-time").textContent = `${fmt(median(stepTimes), 3)} ms`;
        $("step-time").dataset.ms = String(median(stepTimes));
      }
      draw(points, total);
      tick++;
    }
    const [steps, norm] = await demo.optimizer_stats();
    const [testLoss, testAcc] = await demo.evaluate();
    $("test-acc").textContent = `${fmt(100 * testAcc, 1)} %`;
    status.dataset.lossFirst = String(points[0][1]);
    status.dataset.lossLast = String(points[points.length - 1][1]);
    status.dataset.testAccuracy = String(testAcc);
    status.dataset.optimizerSteps = String(steps);
    setStatus(
      "done",
      `Done: ${steps} ${label} steps${clip ? `, last gradient norm ${fmt(norm, 3)}` : ""}; ` +
        `loss ${fmt(points[0][1], 3)} → ${fmt(points[points.length - 1][1], 3)}, ` +
        `test loss ${fmt(testLoss, 3)}, test accuracy ${fmt(100 * testAcc, 1)} % on ${demo.parameters()} parameters.`
    );
    demo.free();
  } catch (e) {
    const text = String(e && e.message ? e.message : e);
    if (/no GPU adapter/i.test(text)) showMessage("error", NO_WEBGPU + `<br><small>${text}</small>`);
    else showMessage("error", `<b>Training failed:</b> ${text}`);
    setStatus("error", text);
  } finally {
    running = false;
    $("start").disabled = false;
  }
}

async function main() {
  await init();
  // For the browser test and the curious: the in-page checks and the step-time benchmark.
  window.wgpuOptim = { self_test, bench_step };
  if (!has_webgpu()) {
    showMessage("error", NO_WEBGPU);
    $("controls").disabled = true;
    setStatus("no-webgpu", "No WebGPU in this browser.");
    return;
  }
  const q = new URLSearchParams(location.search);
  if (q.has("optimizer")) $("optimizer").value = q.get("optimizer");
  if (q.has("clip")) $("clip").checked = q.get("clip") === "1";
  if (q.has("steps")) $("steps").value = q.get("steps");
  $("start").addEventListener("click", train);
  draw([], parseInt($("steps").value, 10));
  if (q.get("autostart") === "1") train();
}

main().catch((e) => {
  showMessage("error", `<b>Could not load the demo:</b> ${e}`);
  setStatus("error", String(e));
});
