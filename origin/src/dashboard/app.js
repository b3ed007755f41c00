// The drops dashboard: sign in with a token, pick a drop, watch its analytics
// (GET /v1/drops/{id}/analytics) every second. No framework: the DOM and uPlot.
"use strict";

(() => {
  const POLL_MS = 1000;
  const TOKEN_KEY = "drops.dashboard.token";
  const $ = (id) => document.getElementById(id);

  let token = sessionStorage.getItem(TOKEN_KEY);
  let watching = null; // { dropId, timer, rateChart, stockChart }

  // ------------------------------------------------------------------ API

  async function api(path) {
    const headers = { accept: "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    const resp = await fetch(path, { headers, cache: "no-store" });
    let body = null;
    try { body = await resp.json(); } catch (_) { /* an empty or non-JSON answer */ }
    return { status: resp.status, body };
  }

  function problemText(answer) {
    const p = answer.body || {};
    return p.detail || p.title || `the server answered ${answer.status}`;
  }

  // Only to greet the user: the server checks the token on every call.
  function claims(raw) {
    try {
      const part = raw.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
    } catch (_) {
      return null;
    }
  }

  // ------------------------------------------------------------------ sign in

  async function signIn(raw) {
    const who = claims(raw);
    if (!who || !who.sub) return "This is not a token.";
    if (who.role !== "creator" && who.role !== "admin") return "Only creators and admins have a dashboard.";
    token = raw;
    const check = await api("/v1/me/following?limit=1");
    if (check.status === 401) {
      token = null;
      return `The server refused this token: ${problemText(check)}`;
    }
    sessionStorage.setItem(TOKEN_KEY, raw);
    $("who").textContent = `${who.role} ${who.sub}`;
    $("who").hidden = false;
    $("sign-out").hidden = false;
    $("sign-in").hidden = true;
    $("pick").hidden = false;
    await loadDrops();
    const wanted = new URLSearchParams(location.search).get("drop");
    if (wanted) watch(wanted);
    return null;
  }

  function signOut(message) {
    stopWatching();
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $("who").hidden = true;
    $("sign-out").hidden = true;
    $("pick").hidden = true;
    $("board").hidden = true;
    $("sign-in").hidden = false;
    $("sign-in-error").textContent = message || "";
  }

  async function loadDrops() {
    const select = $("drop-select");
    select.replaceChildren();
    for (const status of ["live", "upcoming"]) {
      const page = await api(`/v1/drops?status=${status}&limit=100`);
      if (page.status !== 200) continue;
      for (const card of page.body.items) {
        const option = document.createElement("option");
        option.value = card.id;
        option.textContent = `${card.product.title} · ${card.creator.name} (${status})`;
        select.append(option);
      }
    }
    if (!select.options.length) {
      const none = document.createElement("option");
      none.value = "";
      none.textContent = "no live or upcoming drops";
      select.append(none);
    }
  }

  // ------------------------------------------------------------------ watching

  function stopWatching() {
    if (!watching) return;
    clearTimeout(watching.timer);
    watching.rateChart?.destroy();
    watching.stockChart?.destroy();
    watching = null;
  }

  async function watch(dropId) {
    stopWatching();
    $("pick-error").textContent = "";
    watching = { dropId, timer: null, rateChart: null, stockChart: null };
    const card = await api(`/v1/drops/${encodeURIComponent(dropId)}`);
    $("drop-title").textContent = card.status === 200 ? `${card.body.product.title} · ${card.body.creator.name}` : dropId;
    await poll(dropId);
  }

  async function poll(dropId) {
    if (!watching || watching.dropId !== dropId) return;
    let answer;
    try {
      answer = await api(`/v1/drops/${encodeURIComponent(dropId)}/analytics`);
    } catch (e) {
      $("updated").textContent = `cannot reach the server (${e.message}); retrying`;
      answer = null;
    }
    if (!watching || watching.dropId !== dropId) return;
    if (answer && answer.status === 401) return signOut("Your token has expired or was refused; sign in again.");
    if (answer && answer.status === 404) {
      stopWatching();
      $("board").hidden = true;
      $("pick-error").textContent = "No such drop, or it is not yours.";
      return;
    }
    if (answer && answer.status === 200) render(answer.body);
    else if (answer) $("updated").textContent = `the server answered ${answer.status}; retrying`;
    watching.timer = setTimeout(() => poll(dropId), POLL_MS);
  }

  // ------------------------------------------------------------------ drawing

  const number = new Intl.NumberFormat();

  function money(revenue) {
    try {
      return new Intl.NumberFormat(undefined, { style: "currency", currency: revenue.currency }).format(revenue.amount / 100);
    } catch (_) {
      return `${number.format(revenue.amount)} ${revenue.currency}`;
    }
  }

  function render(a) {
    $("board").hidden = false;
    const o = a.orders;
    $("remaining").textContent = number.format(a.stock.remaining);
    $("total").textContent = number.format(a.stock.total);
    $("reserved").textContent = number.format(o.reserved);
    $("confirmed").textContent = number.format(o.confirmed);
    $("released").textContent = number.format(o.failed + o.cancelled + o.expired);
    $("revenue").textContent = money(a.revenue);
    $("conversion").textContent = `${(a.conversion * 100).toFixed(1)} %`;
    $("sold-out").textContent = a.sold_out_after_seconds == null ? "not yet" : `${number.format(a.sold_out_after_seconds)} s`;
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    draw(a);
  }

  // The timeline lists only buckets where something happened: a quiet stretch is
  // drawn as zeros, not as a line between two busy seconds.
  function withQuietBuckets(timeline) {
    const at = timeline.map((b) => Date.parse(b.at) / 1000);
    const step = (i) => (i + 1 < at.length ? at[i + 1] - at[i] : 0);
    const filled = [];
    timeline.forEach((bucket, i) => {
      filled.push({ t: at[i], ...bucket });
      const gap = step(i);
      const unit = gap >= 60 && at[i] % 60 === 0 ? 60 : 1;
      for (let t = at[i] + unit; t < at[i] + gap && filled.length < 5000; t += unit) {
        filled.push({ t, reserved: 0, confirmed: 0, released: 0 });
      }
    });
    return filled;
  }

  function draw(a) {
    const times = [], reserved = [], confirmed = [], released = [], remaining = [];
    let held = 0;
    for (const bucket of withQuietBuckets(a.timeline)) {
      times.push(bucket.t);
      reserved.push(bucket.reserved);
      confirmed.push(bucket.confirmed);
      released.push(bucket.released);
      held += bucket.reserved - bucket.released;
      remaining.push(Math.max(0, a.stock.total - held));
    }
    const rateData = [times, reserved, confirmed, released];
    const stockData = [times, remaining];
    const rate = $("rate-chart"), stock = $("stock-chart");
    // What the chart shows, for people reading the page source and for the browser test.
    rate.dataset.points = String(times.length);
    rate.dataset.units = String(reserved.reduce((s, n) => s + n, 0));
    const width = Math.max(320, rate.clientWidth || 800);
    const stepped = uPlot.paths.stepped({ align: 1 });
    if (!watching.rateChart) {
      watching.rateChart = new uPlot({
        width, height: 240,
        series: [{}, { label: "reserved", stroke: "#5b3df5", paths: stepped },
                 { label: "confirmed", stroke: "#11845b", paths: stepped },
                 { label: "released", stroke: "#c0392b", paths: stepped }],
        axes: [{}, { label: "units / s" }],
      }, rateData, rate);
      watching.stockChart = new uPlot({
        width, height: 240,
        series: [{}, { label: "remaining", stroke: "#1d1d24", fill: "rgba(91,61,245,.08)", paths: stepped }],
        axes: [{}, { label: "units" }],
        scales: { y: { range: [0, Math.max(1, a.stock.total)] } },
      }, stockData, stock);
    } else {
      watching.rateChart.setData(rateData);
      watching.stockChart.setData(stockData);
    }
  }

  // ------------------------------------------------------------------ wiring

  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("sign-in-error").textContent = "";
    const error = await signIn($("token").value.trim());
    if (error) $("sign-in-error").textContent = error;
    $("token").value = "";
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("pick-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("drop-id").value.trim() || $("drop-select").value;
    if (id) watch(id);
  });
  window.addEventListener("resize", () => {
    if (!watching?.rateChart) return;
    const width = Math.max(320, $("rate-chart").clientWidth);
    watching.rateChart.setSize({ width, height: 240 });
    watching.stockChart.setSize({ width, height: 240 });
  });

  if (token) {
    signIn(token).then((error) => { if (error) signOut(error); });
  }
})();
