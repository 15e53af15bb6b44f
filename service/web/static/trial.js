// The trial page: per-epoch table and curves, and the log (followed while the trial runs).
"use strict";
(function () {
  let view = UI.view();
  const name = view.sweep, id = view.trial.trial_id;
  function render() {
    const t = view.trial, c = view.curves;
    document.getElementById("trial-status").textContent = t.status;
    document.getElementById("trial-status").className = "state " + t.status;
    UI.plot("trial-curves", [
      { x: c.epoch, y: c.val_acc, name: "val acc", mode: "lines+markers", hovertemplate: "epoch %{x}<br>val acc %{y:.4f}<extra></extra>" },
      { x: c.epoch, y: c.train_acc, name: "train acc", mode: "lines+markers", hovertemplate: "epoch %{x}<br>train acc %{y:.4f}<extra></extra>" },
      { x: c.epoch, y: c.val_loss, name: "val loss", yaxis: "y2", mode: "lines+markers", line: { dash: "dot" }, hovertemplate: "epoch %{x}<br>val loss %{y:.4g}<extra></extra>" },
      { x: c.epoch, y: c.train_loss, name: "train loss", yaxis: "y2", mode: "lines+markers", line: { dash: "dot" }, hovertemplate: "epoch %{x}<br>train loss %{y:.4g}<extra></extra>" },
    ], { margin: { t: 10, r: 60, b: 45, l: 55 }, xaxis: UI.epochAxis(c.epoch.length), yaxis: { title: { text: "accuracy" } }, yaxis2: { title: { text: "loss (nats)" }, overlaying: "y", side: "right" } });
    document.querySelector("#epochs tbody").replaceChildren(...t.history.map(h => UI.el("tr", {},
      ...[h.epoch, h.attempt].map(v => UI.el("td", { class: "num" }, String(v))),
      ...["val_acc", "val_loss", "train_acc", "train_loss", "lr", "epoch_seconds"].map(k => UI.el("td", { class: "num" }, UI.fmt(h[k], k))),
      UI.el("td", { class: "num" }, h.resumed_from_epoch ? `epoch ${h.resumed_from_epoch}` : "–"))));
  }
  async function log() {
    try {
      const response = await fetch(`/sweeps/${name}/trials/${id}/logs?tail=400`, { credentials: "same-origin" });
      const pre = document.getElementById("log");
      const follow = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20;
      pre.textContent = response.ok ? await response.text() : "no log yet: a trial writes it once it starts";
      if (follow) pre.scrollTop = pre.scrollHeight;
      document.getElementById("log-note").textContent = view.running ? "(last 400 lines, following)" : "(last 400 lines)";
    } catch (err) { document.getElementById("log-note").textContent = "could not read the log: " + err.message; }
  }
  render(); log();
  setInterval(async () => {
    if (!view.running) return;
    try { view = await UI.json(`/ui/data/sweeps/${name}/trials/${id}`); render(); } catch (err) { /* shown on the next try */ }
    log();
  }, 2000);
})();
