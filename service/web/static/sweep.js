// The sweep page: headline, sortable/filterable trial table, charts; polls while the sweep runs.
"use strict";
(function () {
  let view = UI.view();
  const name = view.sweep;
  const selected = new Set();
  let sortKey = "objective", sortDescending = null;  // null: the record's own order (best first)
  const standard = ["val_acc", "val_loss", "train_acc", "train_loss"];
  // the standard metrics, then any objective's own (params, inference_ms, ...)
  function metrics() {
    const ix = view.index, objectives = ix ? (ix.objectives && ix.objectives.length ? ix.objectives : [ix.objective]) : [];
    return [...standard, ...objectives.map(o => o.metric).filter(m => !standard.includes(m))];
  }

  function headline() {
    const ix = view.index;
    document.getElementById("state").textContent = view.state;
    document.getElementById("state").className = "state " + view.state;
    if (!ix) { document.getElementById("summary").textContent = "no record yet: the driver writes it once it starts"; return; }
    const states = Object.entries(ix.trial_states).filter(([, n]) => n).map(([s, n]) => `${n} ${s.replace("_", " ")}`).join(", ");
    const best = ix.best_trial ? `best ${ix.objective.metric} ${UI.fmt(ix.best_value, ix.objective.metric)} (trial ${ix.best_trial}, epoch ${ix.best_epoch})` : "no result yet";
    const wall = Math.round(ix.wall_seconds);
    document.getElementById("summary").replaceChildren(
      UI.el("span", { id: "best", "data-trial": ix.best_trial || "", "data-value": ix.best_value ?? "" }, best), " · ",
      UI.el("span", { id: "epochs-run" }, `${ix.epochs_run} of ${ix.epoch_budget} epochs run`), " · ",
      `${ix.num_trials} trials: ${states || "none yet"} · ${Math.floor(wall / 60)}:${String(wall % 60).padStart(2, "0")} wall · ${ix.objective.mode} ${ix.objective.metric}` +
      (ix.objectives && ix.objectives.length ? ` · objectives ${ix.objectives.map(o => `${o.mode} ${o.metric}`).join(", ")}: Pareto front of ${ix.pareto_front.length}` : "") +
      (ix.constraints && ix.constraints.length ? ` · constraints ${ix.constraints.join(", ")}` : "") +
      (ix.stop_reason ? ` · stopped: ${ix.stop_reason}` : ""));
  }

  function columns() {
    const infeasible = view.trials.some(t => t.infeasible) ? [["infeasible", "infeasible (never ranked)"]] : [];
    return [["trial_id", "trial"], ["status", "status"], ...view.config_keys.map(k => ["config." + k, k]),
            ["stop_reason", "stop reason"], ...infeasible, ...metrics().map(m => ["best." + m, m]), ["epochs", "epochs"], ["seconds", "seconds"]];
  }
  function value(trial, key) {
    if (key.startsWith("config.")) return trial.config[key.slice(7)];
    if (key.startsWith("best.")) return trial.best ? trial.best[key.slice(5)] : null;
    return trial[key];
  }
  function sortedTrials() {
    let rows = view.trials.slice();  // the record's order: best objective first (trials_body)
    const status = document.getElementById("status-filter").value;
    const text = document.getElementById("text-filter").value.trim().toLowerCase();
    if (status) rows = rows.filter(t => t.status === status);
    if (text) rows = rows.filter(t => JSON.stringify([t.trial_id, t.config, t.stop_reason, t.status]).toLowerCase().includes(text));
    // A stable sort of the record's ranking: equal values keep the record's order.
    if (sortDescending !== null) {
      rows.sort((a, b) => {
        const x = value(a, sortKey), y = value(b, sortKey);
        if (x === y) return 0; if (x === null || x === undefined) return 1; if (y === null || y === undefined) return -1;
        return (x < y ? -1 : 1) * (sortDescending ? -1 : 1);
      });
    }
    return rows;
  }
  function table() {
    const cols = columns();
    const head = UI.el("tr", {}, UI.el("th", {}, "curve"), ...cols.map(([key, label]) => {
      const th = UI.el("th", { class: "sort" + (key === sortKey && sortDescending !== null ? (sortDescending ? " desc" : " asc") : ""), "data-key": key }, label);
      th.addEventListener("click", () => {
        if (sortKey === key) sortDescending = !sortDescending; else { sortKey = key; sortDescending = !key.endsWith("loss") && key !== "trial_id"; }
        table();
      });
      return th;
    }));
    document.querySelector("#trials thead").replaceChildren(head);
    const body = sortedTrials().map(t => {
      const box = UI.el("input", { type: "checkbox", checked: selected.has(t.trial_id) });
      box.addEventListener("change", () => { box.checked ? selected.add(t.trial_id) : selected.delete(t.trial_id); refresh(); });
      return UI.el("tr", { "data-trial": t.trial_id, class: t.trial_id === (view.index && view.index.best_trial) ? "best-row" : "" },
        UI.el("td", {}, box),
        ...cols.map(([key]) => key === "trial_id"
          ? UI.el("td", {}, UI.el("a", { href: `/ui/sweeps/${name}/trials/${t.trial_id}` }, t.trial_id))
          : key === "status" ? UI.el("td", {}, UI.el("span", { class: "state " + t.status }, t.status),
              ...(t.infeasible && t.status !== "rejected" ? [" ", UI.el("span", { class: "state infeasible", title: t.infeasible }, "infeasible")] : []),
              ...(view.index && (view.index.pareto_front || []).includes(t.trial_id) ? [" ", UI.el("span", { class: "state pareto", title: "on the Pareto front" }, "front")] : []))
          : UI.el("td", { class: typeof value(t, key) === "number" ? "num" : "" }, UI.fmt(value(t, key), key.split(".").pop()))));
    });
    document.querySelector("#trials tbody").replaceChildren(...body);
  }
  function charts() {
    const ix = view.index;
    if (!ix) return;
    const metric = ix.objective.metric;
    const curves = Object.entries(view.curves).map(([id, c]) => ({
      x: c.epoch, y: c[metric], name: id, mode: "lines+markers", type: "scatter",
      hovertemplate: `trial ${id}<br>epoch %{x}<br>${metric} %{y:.4f}<extra></extra>` }));
    document.getElementById("curves-note").textContent = selected.size ? "(the best 5 and your selection)" : "(the best 5; tick rows to add)";
    UI.plot("curves", curves, { xaxis: UI.epochAxis(ix.max_epochs), yaxis: { title: { text: metric } } });
    if (view.best_so_far) {
      const b = view.best_so_far;
      UI.plot("best-so-far", [{ x: b.minutes, y: b.best, customdata: b.trial.map((t, i) => [t, b.epoch[i]]), mode: "lines+markers",
        line: { shape: "hv" }, hovertemplate: `%{y:.4f} by trial %{customdata[0]}, epoch %{customdata[1]}<br>%{x:.1f} min<extra></extra>` }],
        { xaxis: { title: { text: "minutes since the sweep started (trial start + its epoch times)" } }, yaxis: { title: { text: "best " + metric } } });
    }
    const scored = view.trials.filter(t => t.best && t.best[metric] !== null && t.best[metric] !== undefined);
    const numericKeys = view.config_keys.filter(k => scored.length && scored.every(t => typeof t.config[k] === "number"));
    const categoricalKeys = view.config_keys.filter(k => !numericKeys.includes(k) && scored.length);
    if (scored.length && view.config_keys.length) parallelCoordinates(scored, metric);
    const box = document.getElementById("scheduler-box");
    if (view.scheduler === "pbt") {
      document.getElementById("scheduler-title").textContent = "PBT exploits (lineage)";
      const traces = Object.entries(view.curves).map(([id, c]) => ({ x: c.epoch, y: c[metric], name: id, mode: "lines", hovertemplate: `trial ${id}<br>epoch %{x}<br>%{y:.4f}<extra></extra>` }));
      for (const e of view.lineage) {
        const target = view.curves[e.trial];
        const after = target ? target.epoch.indexOf(e.epoch + 1) : -1;
        if (e.donor_value !== null && after >= 0) traces.push({ x: [e.epoch, e.epoch + 1], y: [e.donor_value, target[metric][after]], mode: "lines", line: { dash: "dot", color: "grey" }, showlegend: false,
          hovertemplate: `${e.trial} took ${e.donor}'s epoch ${e.epoch}<extra></extra>` });
      }
      UI.plot("scheduler", traces, { xaxis: UI.epochAxis(ix.max_epochs), yaxis: { title: { text: metric } } });
    } else if (["asha", "hyperband"].includes(view.scheduler)) {
      document.getElementById("scheduler-title").textContent = `${view.scheduler.toUpperCase()}: where trials were cut`;
      const byStatus = {};
      for (const t of scored) (byStatus[t.status] = byStatus[t.status] || []).push(t);
      const traces = Object.entries(byStatus).map(([status, ts]) => ({ x: ts.map(t => t.epochs), y: ts.map(t => t.best[metric]), text: ts.map(t => t.trial_id), name: status.replace("_", " "), mode: "markers", type: "scatter",
        hovertemplate: `trial %{text}<br>%{x} epochs<br>best ${metric} %{y:.4f}<extra></extra>` }));
      UI.plot("scheduler", traces, { xaxis: UI.epochAxis(ix.max_epochs, "epochs trained"), yaxis: { title: { text: "best " + metric } },
        shapes: view.rungs.map(r => ({ type: "line", x0: r, x1: r, yref: "paper", y0: 0, y1: 1, line: { dash: "dash", color: "#999" } })) });
    } else box.hidden = true;
  }

  // Parallel coordinates drawn as SVG lines (Plotly's parcoords needs WebGL and eval, which the
  // pages' CSP forbids): one line per scored trial across its config values and the objective,
  // each axis scaled to its own range; colour follows the objective (dark: worse, bright: better).
  function parallelCoordinates(scored, metric) {
    const axes = view.config_keys.map(k => {
      const raw = scored.map(t => t.config[k]);
      if (raw.every(v => typeof v === "number")) return { label: k, raw, numeric: true };
      const levels = [...new Set(raw.map(v => UI.fmt(v ?? null)))];  // labels: UI.short()
      return { label: k, raw: raw.map(v => levels.indexOf(UI.fmt(v ?? null))), levels, numeric: false };
    });
    axes.push({ label: metric, raw: scored.map(t => t.best[metric]), numeric: true });
    for (const axis of axes) {
      axis.min = Math.min(...axis.raw); axis.max = Math.max(...axis.raw);
      axis.scaled = axis.raw.map(v => axis.max > axis.min ? (v - axis.min) / (axis.max - axis.min) : 0.5);
    }
    const objective = axes[axes.length - 1].scaled;
    const better = view.index.objective.mode === "max" ? (v => v) : (v => 1 - v);
    const colour = v => `hsl(${Math.round(260 - 200 * better(v))}, 70%, ${Math.round(30 + 25 * better(v))}%)`;
    const traces = scored.map((t, i) => ({
      x: axes.map((_, j) => j), y: axes.map(a => a.scaled[i]), mode: "lines+markers", type: "scatter", showlegend: false,
      line: { color: colour(objective[i]), width: 2 }, marker: { size: 5 },
      text: axes.map(a => `${a.label}: ${a.numeric ? UI.fmt(a.raw[i], a.label) : a.levels[a.raw[i]]}`),
      hovertemplate: `trial ${t.trial_id}<br>%{text}<extra></extra>` }));
    const labels = axes.flatMap((a, j) => [
      { x: j, y: 1.08, text: `<b>${a.label}</b>`, showarrow: false, yref: "y" },
      { x: j, y: 1.0, text: a.numeric ? UI.fmt(a.max, a.label) : UI.short(a.levels[a.levels.length - 1]), showarrow: false, xanchor: "left", xshift: 4 },
      { x: j, y: 0.0, text: a.numeric ? UI.fmt(a.min, a.label) : UI.short(a.levels[0]), showarrow: false, xanchor: "left", xshift: 4 }]);
    UI.plot("parcoords", traces, {
      xaxis: { visible: false, range: [-0.2, axes.length - 0.6] }, yaxis: { visible: false, range: [-0.05, 1.15] },
      shapes: axes.map((_, j) => ({ type: "line", x0: j, x1: j, y0: 0, y1: 1, line: { color: "#555" } })),
      annotations: labels, margin: { t: 10, r: 10, b: 10, l: 10 } });
  }

  async function refresh() {
    try {
      const query = selected.size ? "?trials=" + encodeURIComponent([...selected].join(",")) : "";
      view = await UI.json(`/ui/data/sweeps/${name}${query}`);
      document.getElementById("problem").hidden = true;
    } catch (err) {
      const problem = document.getElementById("problem");
      problem.hidden = false; problem.textContent = "could not refresh: " + err.message;
    }
    render();
  }
  function render() { headline(); table(); charts(); }

  document.getElementById("status-filter").addEventListener("change", table);
  document.getElementById("text-filter").addEventListener("input", table);
  const cancel = document.getElementById("cancel");
  if (cancel) cancel.addEventListener("click", async () => {
    if (!window.confirm(`Cancel sweep ${name}? Finished trials and checkpoints stay in storage.`)) return;
    try { await UI.json(`/sweeps/${name}`, { method: "DELETE", headers: { "X-CSRF-Token": UI.csrf() } }); refresh(); }
    catch (err) { window.alert("cancel failed: " + err.message); }
  });
  render();
  // Poll while the sweep runs (every 2 s, as often as the driver writes its index).
  setInterval(() => { if (UI.running(view.state) || (view.index && view.index.status === "running")) refresh(); }, 2000);
})();
