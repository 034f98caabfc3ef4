// The lab page (decision 0015 §5): follows /events and redraws. Vanilla JS and inline SVG; read-only.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const TOP_PATTERNS = 32;
let chosen = null; // {job, state}: the job whose histogram is shown
let latest = null; // the last state the stream sent

// --- small helpers -----------------------------------------------------------------------------

function build(ns, tag, attrs, children) {
  const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children || []) if (child) node.append(child);
  return node;
}
const h = (tag, attrs, ...children) => build(null, tag, attrs, children);
const s = (tag, attrs, ...children) => build(SVG, tag, attrs, children);
const titled = (node, text) => { node.append(s("title", { text })); return node; };
const $ = (id) => document.getElementById(id);
const fill = (node, ...children) => node.replaceChildren(...children.filter(Boolean));
const muted = (text) => h("p", { class: "muted", text });

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
}
const localTime = (ts) => (ts === null || ts === undefined ? "–" : new Date(ts * 1000).toLocaleString());
const count = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString());

// A perceptual-ish scale (dark blue → teal → yellow), t in [0, 1].
const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function colour(t) {
  t = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(t));
  const [a, b] = [STOPS[i], STOPS[i + 1]];
  const mix = a.map((v, k) => Math.round(v + (b[k] - v) * (t - i)));
  return `rgb(${mix.join(",")})`;
}
const ink = (t) => (t > 0.55 ? "#111" : "#fff");

// --- the live stream ----------------------------------------------------------------------------

function connect() {
  const events = new EventSource("events");
  const badge = $("connection");
  events.onopen = () => { badge.textContent = "live"; badge.className = "badge on"; };
  events.onerror = () => { badge.textContent = "disconnected"; badge.className = "badge off"; };
  events.onmessage = (message) => {
    badge.textContent = "live";
    badge.className = "badge on";
    latest = JSON.parse(message.data);
    render(latest);
  };
}

function render(state) {
  $("lab").textContent = state.lab;
  document.title = `${state.lab}: awen lab`;
  $("paused").hidden = !state.paused;
  $("clock").textContent = `as of ${new Date(state.time * 1000).toLocaleTimeString()}`;
  renderRunning(state.running);
  renderQueue(state.queue);
  renderRecent(state.recent);
  renderDevices(state.devices);
  renderCalibration(state.calibration);
}

// --- jobs ---------------------------------------------------------------------------------------

function renderRunning(running) {
  if (!running) return fill($("running"), muted("Nothing is running."));
  const total = running.shots_total, done = running.shots_done ?? 0;
  const bar = h("progress", { "data-testid": "running-progress", max: total || 1, value: total ? done : 0,
    "aria-label": `shots of ${running.job}` });
  const phase = running.phase === null ? "–" : `${running.phase + 1} / ${running.phases ?? "?"}`;
  fill($("running"),
    h("p", {}, h("code", { "data-testid": "running-job", text: running.job })),
    bar,
    h("dl", { class: "facts" },
      h("dt", { text: "shots" }), h("dd", { "data-testid": "running-shots", text: `${count(done)} / ${count(total)}` }),
      h("dt", { text: "phase" }), h("dd", { "data-testid": "running-phase", text: phase }),
      h("dt", { text: "time left" }), h("dd", { "data-testid": "running-eta", text: duration(running.eta_s) })));
}

function renderQueue(queue) {
  if (queue === null) return fill($("queue"), row(6, "The scheduler is not answering."));
  if (!queue.length) return fill($("queue"), row(6, "The queue is empty."));
  fill($("queue"), ...queue.map((q) => h("tr", { "data-testid": "queue-row", "data-job": q.job },
    h("td", {}, h("code", { text: q.job })), h("td", { text: q.priority }),
    h("td", { text: q.state + (q.planned ? "" : " (not planned)") }),
    h("td", { text: `${q.next_phase + 1} / ${q.phases}` }),
    h("td", { text: duration(q.expected_s) }), h("td", { text: localTime(q.deadline) }))));
}

function row(columns, text) {
  return h("tr", {}, h("td", { colspan: columns, class: "muted", text }));
}

function renderRecent(recent) {
  if (recent === null) return fill($("recent"), row(5, "The store is not answering."));
  if (!recent.length) return fill($("recent"), row(5, "No jobs yet."));
  fill($("recent"), ...recent.map((job) => {
    const choose = () => chooseJob(job);
    return h("tr", { "data-testid": "recent-row", "data-job": job.job, "data-state": job.state, tabindex: 0,
      class: chosen && chosen.job === job.job ? "chosen" : null, "aria-selected": chosen && chosen.job === job.job,
      onclick: choose, onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); choose(); } } },
    h("td", {}, h("code", { text: job.job })), h("td", { class: `state ${job.state}`, text: job.state }),
    h("td", { text: localTime(job.submitted) }), h("td", { text: count(job.shots) }),
    h("td", { text: (job.tags || []).join(", ") }));
  }));
  // The chosen job's counts grow while it runs: read them again when its state changes.
  const now = chosen && recent.find((job) => job.job === chosen.job);
  if (now && now.state !== chosen.state) chooseJob(now);
}

async function chooseJob(job) {
  chosen = { job: job.job, state: job.state };
  for (const tr of document.querySelectorAll("#recent tr")) {
    const on = tr.dataset.job === job.job;
    tr.classList.toggle("chosen", on);
    tr.setAttribute("aria-selected", on);
  }
  $("histogram-job").textContent = job.job;
  const target = $("histogram");
  target.setAttribute("aria-busy", "true");
  try {
    const response = await fetch(`api/jobs/${encodeURIComponent(job.job)}/result`);
    const body = await response.json();
    if (chosen.job !== job.job) return; // another job was chosen meanwhile
    if (!response.ok) fill(target, muted(`No result: ${body.message || response.status}`));
    else renderHistogram(target, body);
  } catch (error) {
    fill(target, muted(`No result: ${error}`));
  } finally {
    target.removeAttribute("aria-busy");
  }
}

// --- the histogram --------------------------------------------------------------------------------

function renderHistogram(target, result) {
  const sets = result.registers.length
    ? result.registers.map((r) => ({ label: `register ${r.name}, phase ${r.phase}`, bits: r.modes.length, counts: r.counts }))
    : result.joint.map((j) => ({ label: `phase ${j.phase}: ${j.registers.join(" ")}`, bits: j.bits.length, counts: j.counts }));
  if (!sets.length) return fill(target, muted(`${result.job} (${result.state}) measured no patterns.`));
  fill(target, h("p", { class: "muted", text: `${result.state}${result.partial ? " (partial)" : ""}, ` +
      `${count(result.shots)} shots, calibration ${result.calibration ?? "–"}` }),
    ...sets.map((set) => h("figure", {}, h("figcaption", { text: set.label }), histogram(set))));
}

function histogram({ label, bits, counts }) {
  const patterns = counts.map((n, v) => ({ pattern: v.toString(2).padStart(bits, "0"), n, v }))
    .filter((p) => p.n > 0).sort((a, b) => b.n - a.n).slice(0, TOP_PATTERNS).sort((a, b) => a.v - b.v);
  const [W, H, L, B, T] = [Math.max(320, 40 + patterns.length * 26), 220, 56, 18 + bits * 7, 12];
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", class: "chart",
    "data-testid": "histogram-svg", "aria-label": `${label}: counts of the ${patterns.length} most frequent patterns` });
  if (!patterns.length) { svg.append(s("text", { x: L, y: H / 2, text: "no counts yet" })); return svg; }
  const top = Math.max(...patterns.map((p) => p.n));
  const y = (n) => H - B - (n / top) * (H - B - T);
  const step = (W - L - 8) / patterns.length;
  axes(svg, L, W - 8, T, H - B, ticks(0, top).map((n) => [y(n), count(n)]), "counts");
  patterns.forEach((p, i) => {
    const x = L + i * step + step * 0.15;
    svg.append(titled(s("rect", { class: "bar", "data-testid": "histogram-bar", "data-pattern": p.pattern,
      "data-count": p.n, x, y: y(p.n), width: step * 0.7, height: H - B - y(p.n) }), `${p.pattern}: ${count(p.n)}`));
    const cx = x + step * 0.35, ly = H - B + 6;
    svg.append(s("text", { class: "tick pattern", x: cx, y: ly, "text-anchor": bits > 3 ? "end" : "middle",
      "dominant-baseline": "hanging", transform: bits > 3 ? `rotate(-60 ${cx} ${ly})` : null, text: p.pattern }));
  });
  return svg;
}

// --- charts ---------------------------------------------------------------------------------------

function ticks(lo, hi, n = 4) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((v) => v >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

const TIME_STEPS = [60, 300, 600, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];
function timeTicks(t0, t1) {
  const step = TIME_STEPS.find((v) => v >= (t1 - t0) / 6) || 604800;
  const out = [];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) out.push(t);
  return out;
}

function axes(svg, x0, x1, y0, y1, yTicks, yLabel) {
  svg.append(s("line", { class: "axis", x1: x0, y1: y0, x2: x0, y2: y1 }),
    s("line", { class: "axis", x1: x0, y1: y1, x2: x1, y2: y1 }),
    s("text", { class: "label", x: 12, y: (y0 + y1) / 2, transform: `rotate(-90 12 ${(y0 + y1) / 2})`,
      "text-anchor": "middle", text: yLabel }));
  for (const [y, text] of yTicks) {
    svg.append(s("line", { class: "grid", x1: x0, y1: y, x2: x1, y2: y }),
      s("text", { class: "tick", x: x0 - 4, y, "text-anchor": "end", "dominant-baseline": "middle", text }));
  }
}

function renderCalibration(cal) {
  if (cal === null) {
    fill($("calibration"), h("dd", { class: "muted", text: "The calibration actor is not answering." }));
    return fill($("drift"), driftPlot([]));
  }
  const status = cal.calibrating ? "calibrating" : cal.valid ? "valid" : "not valid";
  fill($("calibration"),
    h("dt", { text: "device" }), h("dd", { text: cal.device }),
    h("dt", { text: "version" }), h("dd", { "data-testid": "calibration-version", text: cal.version ?? "none" }),
    h("dt", { text: "age" }), h("dd", { text: duration(cal.age_s) }),
    h("dt", { text: "status" }), h("dd", { "data-testid": "calibration-status", class: `state ${status.replace(" ", "-")}`, text: status }),
    cal.last_error && h("dt", { text: "last error" }), cal.last_error && h("dd", { text: cal.last_error }));
  fill($("drift"), driftPlot(cal.drift || []));
}

function driftPlot(points) {
  const [W, H, L, B, T, R] = [640, 220, 56, 36, 12, 16];
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", class: "chart",
    "data-testid": "drift-plot", "data-points": points.length,
    "aria-label": points.length ? `reference fidelity, ${points.length} drift checks` : "no drift checks yet" });
  if (!points.length) {
    axes(svg, L, W - R, T, H - B, [], "fidelity");
    svg.append(s("text", { class: "muted", x: (L + W) / 2, y: H / 2, "text-anchor": "middle", text: "no drift checks yet" }));
    return svg;
  }
  const ts = points.map((p) => p[0]), fs = points.map((p) => p[1]);
  let [t0, t1] = [Math.min(...ts), Math.max(...ts)];
  if (t1 - t0 < 1) [t0, t1] = [t0 - 30, t1 + 30];
  const lo = Math.max(0, Math.min(...fs) - 0.01), hi = Math.min(1, Math.max(...fs) + 0.01);
  const [f0, f1] = hi - lo < 0.02 ? [Math.max(0, hi - 0.02), Math.max(hi, 0.02)] : [lo, hi];
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R), y = (f) => H - B - ((f - f0) / (f1 - f0)) * (H - B - T);
  axes(svg, L, W - R, T, H - B, ticks(f0, f1).map((f) => [y(f), f.toFixed(3)]), "fidelity");
  const span = t1 - t0;
  for (const t of timeTicks(t0, t1)) {
    const d = new Date(t * 1000);
    const text = span > 2 * 86400 ? d.toLocaleDateString() : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    svg.append(s("text", { class: "tick", x: x(t), y: H - B + 14, "text-anchor": "middle", text }));
  }
  svg.append(s("text", { class: "label", x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", text: "time (local)" }),
    s("polyline", { class: "line", points: points.map(([t, f]) => `${x(t)},${y(f)}`).join(" ") }),
    ...points.map(([t, f]) => titled(s("circle", { class: "dot", cx: x(t), cy: y(f), r: 3 }),
      `${localTime(t)}: ${f.toFixed(4)}`)));
  return svg;
}

// --- devices and their meshes ----------------------------------------------------------------------

function renderDevices(devices) {
  if (devices === null) return fill($("devices"), muted("The HAL is not answering."));
  if (!devices.length) return fill($("devices"), muted("No devices."));
  fill($("devices"), ...devices.map((d) => h("article", { class: "device", "data-testid": "device", "data-device": d.name },
    h("h3", {}, h("span", { text: d.name }), " ",
      h("span", { class: `badge ${d.state === "connected" ? "on" : "off"}`, "data-testid": "device-state", text: d.state }),
      d.interlock ? h("span", { class: "badge off", "data-testid": "interlock", text: "interlock" }) : null),
    h("dl", { class: "facts" },
      h("dt", { text: "identity" }), h("dd", { text: d.identity || "–" }),
      h("dt", { text: "interlock" }), h("dd", { text: d.interlock === null ? "–" : d.interlock ? "tripped" : "clear" }),
      h("dt", { text: "temperature" }), h("dd", { text: d.temperature_c == null ? "–" : `${d.temperature_c.toFixed(2)} °C` }),
      d.detail && h("dt", { text: "detail" }), d.detail && h("dd", { text: d.detail })),
    d.heaters ? mesh(d.heaters) : muted("No heater readings."))));
}

// A Clements mesh of m modes has m*m heaters: MZI k (column by column, top to bottom; column c holds
// MZIs on modes (n, n+1), n = c mod 2) has theta at heater 2k and phi at 2k+1; then one output phase per
// mode (protocol/mesh.py). Other counts are drawn as a strip of numbered cells.
function mesh(volts) {
  const m = Math.round(Math.sqrt(volts.length));
  const vmax = Math.max(1e-9, ...volts.map(Math.abs));
  const cell = (i, x, y, w, hgt, what) => {
    const t = Math.abs(volts[i]) / vmax;
    return s("g", { class: "heater", "data-testid": "heater", "data-heater": i, "data-volts": volts[i] },
      titled(s("rect", { x, y, width: w, height: hgt, rx: 3, fill: colour(t) }), `heater ${i} (${what}): ${volts[i].toFixed(3)} V`),
      s("text", { x: x + w / 2, y: y + hgt / 2, fill: ink(t), "text-anchor": "middle", "dominant-baseline": "middle",
        text: volts[i].toFixed(2) }));
  };
  let svg;
  if (m >= 2 && m * m === volts.length) {
    const [CW, RH, L, T] = [76, 34, 30, 16];
    const W = L + (m + 1) * CW + 10, H = T + m * RH + 40;
    const y = (mode) => T + mode * RH + RH / 2;
    svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "mesh", role: "img", "data-testid": "mesh",
      "data-layout": "clements", "aria-label": `${m}-mode Clements mesh, ${volts.length} heaters; colour and text: volts` });
    for (let mode = 0; mode < m; mode++) {
      svg.append(s("line", { class: "mode", x1: L - 6, y1: y(mode), x2: W - 10, y2: y(mode) }),
        s("text", { class: "tick", x: L - 10, y: y(mode), "text-anchor": "end", "dominant-baseline": "middle", text: mode }));
    }
    let k = 0;
    for (let c = 0; c < m; c++) {
      for (let top = c % 2; top + 1 < m; top += 2, k++) {
        const x = L + c * CW + 4, y0 = y(top) - 8, hgt = RH + 16;
        svg.append(s("rect", { class: "mzi", x, y: y0, width: CW - 8, height: hgt, rx: 5 }),
          cell(2 * k + 1, x + 3, y0 + hgt / 2 - 11, (CW - 14) / 2 - 1, 22, `MZI ${k} phi, modes ${top}-${top + 1}`),
          cell(2 * k, x + 4 + (CW - 14) / 2, y0 + hgt / 2 - 11, (CW - 14) / 2 - 1, 22, `MZI ${k} theta, modes ${top}-${top + 1}`));
      }
    }
    for (let mode = 0; mode < m; mode++) {
      svg.append(cell(2 * k + mode, L + m * CW + 14, y(mode) - 11, CW - 28, 22, `output phase, mode ${mode}`));
    }
    legend(svg, L, H - 18, vmax);
  } else {
    const per = 16, [CW, RH] = [44, 26], rows = Math.ceil(volts.length / per);
    const W = 20 + Math.min(per, volts.length) * CW, H = 20 + rows * RH + 36;
    svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "mesh", role: "img", "data-testid": "mesh",
      "data-layout": "strip", "aria-label": `${volts.length} heaters; colour and text: volts` });
    volts.forEach((_, i) => svg.append(cell(i, 10 + (i % per) * CW, 10 + Math.floor(i / per) * RH, CW - 4, RH - 4, `#${i}`)));
    legend(svg, 10, H - 18, vmax);
  }
  return svg;
}

function legend(svg, x, y, vmax) {
  const id = `scale-${Math.random().toString(36).slice(2)}`;
  svg.append(s("defs", {}, s("linearGradient", { id }, ...STOPS.map((_, i) =>
      s("stop", { offset: i / (STOPS.length - 1), "stop-color": colour(i / (STOPS.length - 1)) })))),
    s("text", { class: "tick", x, y: y + 6, "dominant-baseline": "middle", text: "0 V" }),
    s("rect", { x: x + 28, y, width: 160, height: 12, fill: `url(#${id})` }),
    s("text", { class: "tick", x: x + 194, y: y + 6, "dominant-baseline": "middle", text: `${vmax.toFixed(2)} V (|V|)` }));
}

connect();
