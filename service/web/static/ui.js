// Shared by the pages: formatting, DOM helpers, JSON fetches (same origin, the session cookie).
"use strict";
const UI = {
  view() { return JSON.parse(document.getElementById("view").textContent); },
  csrf() { return document.querySelector('meta[name="csrf-token"]').content; },
  el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k.startsWith("data-")) node.setAttribute(k, v); else node[k] = v;
    }
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
    return node;
  },
  // Accuracies with 4 decimals, losses with 4 significant digits, the rest compact.
  fmt(value, key) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "object") return Object.entries(value).map(([k, v]) => `${k}=${UI.fmt(v)}`).join(" ");
    if (typeof value !== "number") return String(value);
    if (key && key.endsWith("acc")) return value.toFixed(4);
    if (key && key.endsWith("seconds")) return value.toFixed(value < 10 ? 2 : 1);
    if (key && key.endsWith("loss")) return value.toPrecision(4);
    if (Number.isInteger(value)) return String(value);
    return Math.abs(value) < 1e-3 ? value.toExponential(2) : String(+value.toPrecision(4));
  },
  short(text, length = 24) { return text.length > length ? text.slice(0, length - 1) + "…" : text; },
  async json(url, options) {
    const response = await fetch(url, { credentials: "same-origin", ...(options || {}) });
    if (response.status === 401 || (response.redirected && response.url.includes("/ui/login"))) {
      window.location = "/ui/login?next=" + encodeURIComponent(window.location.pathname);
      throw new Error("session ended");
    }
    const body = await response.json();
    if (!response.ok) throw new Error(body.detail ? JSON.stringify(body.detail) : response.statusText);
    return body;
  },
  // Epochs are whole numbers: ticks at integers only.
  epochAxis(maxEpoch, title) { return { title: { text: title || "epoch" }, tick0: 0, dtick: Math.max(1, Math.ceil((maxEpoch || 1) / 10)) }; },
  plot(id, traces, layout) {
    const base = { margin: { t: 10, r: 10, b: 45, l: 55 }, hovermode: "closest", legend: { orientation: "h", y: -0.25 } };
    Plotly.react(id, traces, { ...base, ...layout }, { displaylogo: false, responsive: true });
  },
  running(state) { return ["running", "pending"].includes(state); },
};
