// zoe-edge dashboard: history from /api/telemetry, then live samples from /api/telemetry/stream (SSE).
// Charts are drawn by hand on <canvas>; nothing is fetched from anywhere but this daemon.
"use strict";

(function () {
  const WINDOW_S = 600; // the charts show the last 10 minutes
  const MAX_POINTS = 1200;
  const PALETTE = ["#58a6ff", "#f0883e", "#3fb950", "#d2a8ff", "#ff7b72", "#e3b341", "#79c0ff", "#56d4dd", "#db61a2", "#a5d6ff"];

  const state = {
    points: [], // compact samples, oldest first (same shape as /api/telemetry history)
    latest: null,
    samples: 0, // samples received from the stream
    lastSeq: 0,
    historyLoaded: false,
    colors: {},
    limits: null,
  };
  window.zoeDashboard = state; // read by the browser test

  const $ = (id) => document.getElementById(id);

  function text(id, value) {
    const node = $(id);
    if (node) node.textContent = value;
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else if (k === "color") node.style.backgroundColor = v; // CSSOM: allowed by the page's CSP, unlike style=""
      else node.setAttribute(k, v);
    }
    for (const child of children || []) node.appendChild(child);
    return node;
  }

  function fmt(value, digits, unit) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    return Number(value).toFixed(digits) + (unit || "");
  }

  function mb(value) {
    if (value === null || value === undefined) return "–";
    return value >= 10240 ? (value / 1024).toFixed(1) + " GB" : Math.round(value) + " MB";
  }

  function clock(epoch) {
    return new Date(epoch * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  }

  function colorFor(name) {
    if (!(name in state.colors)) state.colors[name] = PALETTE[Object.keys(state.colors).length % PALETTE.length];
    return state.colors[name];
  }

  // the same compact shape the server keeps in its ring buffer
  function compact(s) {
    const power = s.power || {};
    const rails = {};
    for (const [name, rail] of Object.entries(power.rails || {})) rails[name] = rail.inst_mw;
    const freqs = (s.gpu && s.gpu.freq_mhz) || [];
    const daemon = s.daemon || {};
    return {
      t: s.at,
      seq: s.seq,
      temps: s.temps || {},
      power_mw: power.total_mw,
      rails: rails,
      ram_used_mb: s.memory && s.memory.ram_used_mb,
      ram_total_mb: s.memory && s.memory.ram_total_mb,
      swap_used_mb: s.memory && s.memory.swap_used_mb,
      gpu_load_pct: s.gpu && s.gpu.load_pct,
      gpu_freq_mhz: freqs.length ? Math.max.apply(null, freqs) : null,
      cpu_load_pct: s.cpu && s.cpu.load_pct,
      thermal: s.thermal && s.thermal.state,
      tokens_per_s: daemon.tokens_per_s,
      queue: daemon.queue,
    };
  }

  function push(point) {
    const last = state.points[state.points.length - 1];
    if (last && point.seq <= last.seq && point.t <= last.t) return false;
    state.points.push(point);
    if (state.points.length > MAX_POINTS) state.points.splice(0, state.points.length - MAX_POINTS);
    return true;
  }

  // --- charts -----------------------------------------------------------------------------------

  function drawChart(canvas, series, opts) {
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(100, canvas.clientWidth);
    const height = canvas.clientHeight || Number(canvas.getAttribute("height")) || 150;
    if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const style = getComputedStyle(document.documentElement);
    const lineColor = style.getPropertyValue("--line").trim() || "#333";
    const muted = style.getPropertyValue("--muted").trim() || "#888";

    const points = state.points;
    const tEnd = points.length ? points[points.length - 1].t : Date.now() / 1000;
    // the time axis grows with the data, from one minute up to the whole window
    const firstT = points.length ? Math.max(points[0].t, tEnd - WINDOW_S) : tEnd;
    const span = Math.min(WINDOW_S, Math.max(60, tEnd - firstT));
    const tStart = tEnd - span;
    let lo = opts.min !== undefined ? opts.min : Infinity;
    let hi = opts.max !== undefined ? opts.max : -Infinity;
    let count = 0;
    const last = {};
    for (const s of series) {
      for (const p of points) {
        if (p.t < tStart) continue;
        const v = s.value(p);
        if (v === null || v === undefined) continue;
        count++;
        if (opts.min === undefined) lo = Math.min(lo, v);
        if (opts.max === undefined) hi = Math.max(hi, v);
        last[s.name] = v;
      }
    }
    for (const limit of opts.limits || []) {
      if (limit.value !== null && limit.value !== undefined && limit.value <= hi + (hi - lo) * 0.5) {
        hi = Math.max(hi, limit.value);
        lo = Math.min(lo, limit.value);
      }
    }
    if (!Number.isFinite(lo) || !Number.isFinite(hi)) { lo = 0; hi = 1; }
    if (hi - lo < (opts.minSpan || 1)) {
      const mid = (hi + lo) / 2;
      lo = mid - (opts.minSpan || 1) / 2;
      hi = mid + (opts.minSpan || 1) / 2;
      if (opts.min !== undefined) { lo = Math.max(lo, opts.min); }
    }
    const pad = (hi - lo) * 0.08;
    if (opts.min === undefined) lo -= pad;
    if (opts.max === undefined) hi += pad;

    const left = 38, right = 6, top = 6, bottom = 16;
    const plotW = width - left - right, plotH = height - top - bottom;
    const x = (t) => left + ((t - tStart) / span) * plotW;
    const y = (v) => top + (1 - (v - lo) / (hi - lo)) * plotH;

    ctx.font = "10px system-ui, sans-serif";
    ctx.lineWidth = 1;
    ctx.strokeStyle = lineColor;
    ctx.fillStyle = muted;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const v = lo + ((hi - lo) * i) / 4;
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, yy);
      ctx.lineTo(width - right, yy);
      ctx.stroke();
      ctx.fillText(opts.tick ? opts.tick(v) : v.toFixed(0), left - 4, yy);
    }
    ctx.textBaseline = "alphabetic";
    ctx.textAlign = "left";
    ctx.fillText(span >= 120 ? "-" + Math.round(span / 60) + " min" : "-" + Math.round(span) + " s", left, height - 3);
    ctx.textAlign = "right";
    ctx.fillText("now", width - right, height - 3);

    for (const limit of opts.limits || []) {
      if (limit.value === null || limit.value === undefined || limit.value > hi || limit.value < lo) continue;
      ctx.save();
      ctx.setLineDash([4, 4]);
      ctx.strokeStyle = limit.color;
      ctx.beginPath();
      ctx.moveTo(left, y(limit.value));
      ctx.lineTo(width - right, y(limit.value));
      ctx.stroke();
      ctx.fillStyle = limit.color;
      ctx.textAlign = "left";
      ctx.fillText(limit.label, left + 4, y(limit.value) - 3);
      ctx.restore();
    }

    ctx.lineWidth = 1.6;
    ctx.lineJoin = "round";
    for (const s of series) {
      ctx.strokeStyle = s.color;
      ctx.beginPath();
      let pen = false;
      let prevT = null;
      for (const p of points) {
        if (p.t < tStart) continue;
        const v = s.value(p);
        // a gap in the data (missing value or more than 5 intervals) breaks the line
        if (v === null || v === undefined || (prevT !== null && p.t - prevT > 5 * (opts.interval || 1))) {
          pen = false;
          prevT = v === null || v === undefined ? null : p.t;
          if (v === null || v === undefined) continue;
        }
        if (pen) ctx.lineTo(x(p.t), y(v));
        else { ctx.moveTo(x(p.t), y(v)); pen = true; }
        prevT = p.t;
      }
      ctx.stroke();
    }
    // what the test (and a curious owner) can read back without decoding pixels
    canvas.dataset.points = String(count);
    canvas.dataset.last = JSON.stringify(last);
  }

  function legend(id, series, unit) {
    const box = $(id);
    box.replaceChildren(
      ...series.map((s) => {
        const latest = state.points.length ? s.value(state.points[state.points.length - 1]) : null;
        return el("span", { "data-series": s.name }, [
          el("i", { color: s.color }),
          document.createTextNode(s.name + " " + fmt(latest, 1, unit === "W" ? " W" : "°")),
        ]);
      })
    );
  }

  function tempSeries() {
    const names = new Set();
    for (const p of state.points) for (const n of Object.keys(p.temps || {})) names.add(n);
    return [...names].map((name) => ({ name, color: colorFor("temp:" + name), value: (p) => (p.temps || {})[name] }));
  }

  function powerSeries() {
    const names = new Set();
    for (const p of state.points) for (const n of Object.keys(p.rails || {})) names.add(n);
    const textColor = getComputedStyle(document.documentElement).getPropertyValue("--text").trim() || "#888";
    const series = [{ name: "total", color: textColor, value: (p) => (p.power_mw === null || p.power_mw === undefined ? null : p.power_mw / 1000) }];
    for (const name of names) {
      if (name === "VDD_IN") continue; // VDD_IN is the total
      series.push({ name, color: colorFor("rail:" + name), value: (p) => (p.rails && p.rails[name] !== undefined ? p.rails[name] / 1000 : null) });
    }
    return series;
  }

  function drawCharts() {
    const interval = state.latest ? state.latest.interval_s : 1;
    const temps = tempSeries();
    const thermal = state.latest && state.latest.thermal;
    drawChart($("chart-temp"), temps, {
      unit: "°C", minSpan: 10, interval,
      limits: thermal ? [
        { value: thermal.soft_c, label: "soft " + thermal.soft_c + "°", color: "#d29922" },
        { value: thermal.hard_c, label: "hard " + thermal.hard_c + "°", color: "#f85149" },
      ] : [],
      tick: (v) => v.toFixed(0) + "°",
    });
    legend("legend-temp", temps, "°");
    const power = powerSeries();
    drawChart($("chart-power"), power, { min: 0, minSpan: 2, interval, tick: (v) => v.toFixed(v < 10 ? 1 : 0) + "W" });
    legend("legend-power", power, "W");
    drawChart($("chart-gpu"), [{ name: "gpu", color: "#3fb950", value: (p) => p.gpu_load_pct }], {
      min: 0, max: 100, interval, tick: (v) => v.toFixed(0) + "%",
    });
  }

  // --- panels -------------------------------------------------------------------------------------

  function setBar(id, used, total) {
    const bar = $(id);
    const pct = total ? Math.min(100, (100 * used) / total) : 0;
    bar.style.width = pct.toFixed(1) + "%";
    bar.className = pct >= 95 ? "crit" : pct >= 85 ? "high" : "";
  }

  function renderWarnings(sample) {
    const box = $("warnings");
    box.replaceChildren(
      ...(sample.warnings || []).map((w) =>
        el("div", { class: "warning", "data-kind": w.kind, "data-level": w.level, role: "alert", text: w.message })
      )
    );
  }

  function renderBoard(s) {
    const thermal = s.thermal || {};
    text("temp-now", thermal.temp_c === null || thermal.temp_c === undefined ? "–" : thermal.sensor + " " + fmt(thermal.temp_c, 1, "°C"));
    text("thermal-reason", thermal.reason || "");
    const pill = $("thermal-pill");
    pill.dataset.state = thermal.state || "normal";
    pill.textContent = "thermal " + (thermal.state || "?");

    const power = s.power || {};
    text("power-now", power.total_mw === null || power.total_mw === undefined ? "–" : fmt(power.total_mw / 1000, 1, " W"));
    text("power-from", power.total_from ? "total from " + power.total_from : "no power rails on this source");

    const m = s.memory || {};
    setBar("ram-bar", m.ram_used_mb || 0, m.ram_total_mb || 0);
    text("ram-text", m.ram_total_mb ? mb(m.ram_used_mb) + " / " + mb(m.ram_total_mb) : "–");
    setBar("swap-bar", m.swap_used_mb || 0, m.swap_total_mb || 0);
    text("swap-text", m.swap_total_mb ? mb(m.swap_used_mb) + " / " + mb(m.swap_total_mb) : "none");
    text("ram-available", mb(m.ram_available_mb));

    const gpu = s.gpu || {};
    text("gpu-now", fmt(gpu.load_pct, 0, "%"));
    text("gpu-freq", gpu.freq_mhz && gpu.freq_mhz.length ? gpu.freq_mhz.join(" / ") + " MHz" : "–");
    const emc = s.emc || {};
    text("emc", emc.load_pct === null || emc.load_pct === undefined ? "–" : fmt(emc.load_pct, 0, "%") + (emc.freq_mhz ? " @ " + emc.freq_mhz + " MHz" : ""));
    const on = Object.entries(s.engines || {}).filter(([, e]) => e.online).map(([n, e]) => n + (e.load_pct !== null && e.load_pct !== undefined ? " " + e.load_pct + "%" : ""));
    text("engines", on.length ? on.join(", ") : "none");

    const cpu = s.cpu || {};
    text("cpu-now", fmt(cpu.load_pct, 0, "%"));
    $("cores").replaceChildren(
      ...(cpu.cores || []).map((c, i) =>
        el("div", { class: "core" + (c.online ? "" : " off"), title: "core " + i }, [
          el("b", { text: c.online ? fmt(c.load_pct, 0, "%") : "off" }),
          document.createTextNode(c.online && c.freq_mhz ? c.freq_mhz + " MHz" : "cpu" + i),
        ])
      )
    );
    text("source", s.source + (s.stale ? " (stale)" : ""));
    text("stamp", (s.stamp ? "board clock " + s.stamp + " · " : "") + "sample " + s.seq + " at " + clock(s.at));
  }

  function renderDaemon(d) {
    text("ram-reserve", mb(d.memory_reserve_mb));
    text("ram-usable", mb(d.usable_mb));
    text("model-name", d.model || d.slot_model || "no model loaded");
    const st = $("model-state");
    st.textContent = d.state || "–";
    st.dataset.state = d.state || "";
    text("model-tps", d.tokens_per_s ? fmt(d.tokens_per_s, 1, " tok/s") : "–");
    text("model-rss", mb(d.worker_rss_mb));
    text("model-idle", d.idle_unload_in_s === null || d.idle_unload_in_s === undefined ? "–" : fmt(d.idle_unload_in_s, 0, " s"));
    text("model-profile", d.profile || "–");

    const plan = d.plan;
    const rows = [];
    if (plan) {
      const show = [["fits", plan.fits ? "yes" : "NO"], ["GPU layers", plan.gpu_layers]];
      for (const [k, v] of Object.entries(plan)) {
        if (k.endsWith("_mb")) show.push([k.slice(0, -3).replace(/_/g, " "), mb(v)]);
      }
      for (const [k, v] of show) rows.push(el("dt", { text: k }), el("dd", { text: String(v) }));
    } else {
      rows.push(el("dt", { text: "no plan (nothing loaded)" }), el("dd", {}));
    }
    $("plan").replaceChildren(...rows);
    text("plan-reason", plan && plan.reason ? plan.reason : "");

    text("queue-now", String(d.queue === undefined ? "–" : d.queue));
    text("requests-total", String(d.requests === undefined ? "–" : d.requests));
    text("fallbacks", String(d.fallbacks === undefined ? "–" : d.fallbacks));
    const byModel = Object.entries(d.queue_by_model || {}).map(([m, n]) => m + ": " + n);
    text("queue-by-model", byModel.length ? byModel.join(", ") : "none");
    const byPriority = Object.entries(d.queue_by_priority || {}).filter(([, n]) => n > 0).map(([p, n]) => p + ": " + n);
    text("queue-by-priority", byPriority.length ? byPriority.join(", ") : "none");
    const sched = d.scheduling;
    if (sched) {
      const who = (h) => (h ? h.model + " · " + h.priority + " · " + fmt(h.for_s, 1, " s") : "nothing");
      text("sched-serving", who(sched.serving));
      text("sched-suspended", who(sched.suspended));
      const s = sched.suspension;
      text(
        "sched-suspensions",
        s.suspensions + " paused, " + s.resumes + " resumed, " + s.refusals + " refused" +
          (s.suspensions ? " · last " + fmt(s.last_state_mb, 1, " MB") + " saved in " + fmt(s.last_save_ms, 1, " ms") : "")
      );
      const p = sched.prediction;
      text(
        "sched-prediction",
        p.samples
          ? "|error| p50 " + fmt(p.abs_error_p50_s, 2, " s") + ", p95 " + fmt(p.abs_error_p95_s, 2, " s") +
              " over " + p.recent + " · " + p.expired + " left at their deadline, " + p.refused + " sent on at once"
          : "no queued request yet"
      );
    }

    const reqs = (d.recent_requests || []).slice().reverse();
    $("requests").replaceChildren(
      ...(reqs.length
        ? reqs.map((r) =>
            el("tr", { "data-status": String(r.status) }, [
              el("td", { class: "time", text: clock(r.at) }),
              el("td", { text: r.served_by || "–" }),
              el("td", { text: (r.route || "") + (r.fallback ? " · fallback: " + r.fallback : "") }),
              el("td", { class: "num", text: String(r.status) }),
              el("td", { class: "num", text: fmt(r.ms, 0) }),
            ])
          )
        : [el("tr", {}, [el("td", { colspan: "5", class: "muted", text: "no requests yet" })])])
    );

    text("swaps-now", String(d.swaps === undefined ? "–" : d.swaps));
    const swaps = (d.recent_swaps || []).slice().reverse();
    $("swaps").replaceChildren(
      ...(swaps.length
        ? swaps.map((w) =>
            el("tr", {}, [
              el("td", { class: "time", text: clock(w.at) }),
              el("td", { text: (w.from || "–") + " → " + w.to }),
              el("td", { class: "num", text: fmt(w.duration_ms, 0) }),
              el("td", { text: w.reason || "" }),
            ])
          )
        : [el("tr", {}, [el("td", { colspan: "4", class: "muted", text: "no swaps yet" })])])
    );
    const failures = Object.entries(d.failures || {});
    $("failures").replaceChildren(
      ...(failures.length
        ? failures.map(([m, f]) => el("li", { text: m + ": " + f.reason + " (" + f.count + "×, retry in " + f.retry_in_s + " s)" }))
        : [el("li", { class: "muted", text: "none" })])
    );
  }

  function render(sample) {
    state.latest = sample;
    renderBoard(sample);
    renderDaemon(sample.daemon || {});
    renderWarnings(sample);
    drawCharts();
    document.body.dataset.seq = String(sample.seq);
  }

  // --- data -----------------------------------------------------------------------------------------

  function setConn(stateName, label) {
    const pill = $("conn");
    pill.dataset.state = stateName;
    pill.textContent = label;
  }

  async function loadHistory() {
    // from the origin, not the page URL: a page opened with user:key@ in its URL cannot fetch relative URLs
    const r = await fetch(new URL("/api/telemetry?seconds=" + WINDOW_S, window.location.origin), { cache: "no-store" });
    if (!r.ok) throw new Error("GET /api/telemetry: " + r.status);
    const body = await r.json();
    text("reason", body.reason || "");
    for (const p of body.history || []) push(p);
    state.historyLoaded = true;
    if (body.snapshot) render(body.snapshot);
  }

  function connect() {
    const source = new EventSource(new URL("/api/telemetry/stream", window.location.origin));
    source.onopen = () => setConn("open", "live");
    source.onmessage = (event) => {
      const sample = JSON.parse(event.data);
      state.samples++;
      state.lastSeq = sample.seq;
      push(compact(sample));
      render(sample);
    };
    source.onerror = () => setConn(source.readyState === EventSource.CLOSED ? "closed" : "connecting", "reconnecting");
  }

  window.addEventListener("resize", () => { if (state.latest) drawCharts(); });
  document.addEventListener("DOMContentLoaded", () => {
    loadHistory()
      .catch((err) => { text("reason", "history unavailable: " + err.message); })
      .finally(connect);
  });
})();
