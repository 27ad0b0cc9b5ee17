"""The fleet dashboard: one static page that polls the JSON API every few seconds."""

from __future__ import annotations

__all__ = ["DASHBOARD_HTML"]

DASHBOARD_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>edgecloud fleet</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
 table { border-collapse: collapse; margin-bottom: 2em; }
 th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; }
 th { background: #f4f4f4; }
 .on { color: #080; } .off { color: #a00; }
 .bar { width: 160px; height: 10px; background: #eee; display: inline-block; }
 .bar > span { display: block; height: 100%; background: #2a7; }
 .bar > span.bad { background: #c33; }
 button { margin-right: 4px; }
 #err { color: #a00; }
 .ci { width: 160px; height: 10px; background: #eee; display: inline-block; position: relative; }
 .ci > span { position: absolute; height: 100%; background: #9cd; }
 .ci > i { position: absolute; width: 2px; height: 100%; background: #036; }
</style>
</head>
<body>
<h1>edgecloud fleet</h1>
<p>API key (if the server needs one): <input id="key" type="password" size="30"> <span id="err"></span></p>
<h2>Rollouts</h2>
<table><thead><tr><th>id</th><th>bundle</th><th>rev</th><th>status</th><th>progress</th><th>wave</th>
<th>ok / failed / total</th><th></th></tr></thead><tbody id="rollouts"></tbody></table>
<h2>Devices</h2>
<table><thead><tr><th>device</th><th>state</th><th>model</th><th>labels</th><th>escalation rate</th>
<th>last seen</th><th>rollout</th></tr></thead><tbody id="devices"></tbody></table>
<h2>Field quality</h2>
<p>Per bundle version, over each device's latest counts: the cloud's shadow checks of answers the devices
kept, and what triage did with the queries (bars: 95% intervals on 0&ndash;100%).</p>
<table><thead><tr><th>model</th><th>devices</th><th>queries</th><th>agreement with the cloud</th>
<th>checks (shed)</th><th>escalation rate</th><th>abstention rate</th></tr></thead>
<tbody id="quality"></tbody></table>
<script>
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const keyInput = document.getElementById("key");
keyInput.value = sessionStorage.getItem("fleetKey") || "";
keyInput.onchange = () => { sessionStorage.setItem("fleetKey", keyInput.value); refresh(); };
function headers() { return keyInput.value ? {"Authorization": "Bearer " + keyInput.value} : {}; }
async function api(path, method = "GET") {
  // A POST declares JSON, as the API requires of every write (a cross-site form cannot).
  const init = method === "GET" ? {method, headers: headers()}
    : {method, headers: {...headers(), "Content-Type": "application/json"}, body: "{}"};
  const r = await fetch(path, init);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
  return body;
}
function rate(r) {
  if (r.value == null) return "no evidence";
  return `<span class="ci" title="${(100 * r.low).toFixed(1)}%&ndash;${(100 * r.high).toFixed(1)}%">` +
    `<span style="left:${100 * r.low}%;width:${100 * (r.high - r.low)}%"></span><i style="left:${100 * r.value}%"></i>` +
    `</span> ${(100 * r.value).toFixed(1)}% (${(100 * r.low).toFixed(1)}&ndash;${(100 * r.high).toFixed(1)})`;
}
function gate(r) {
  const g = (r.quality_gates || []).filter(Boolean).pop();
  return g ? `<br><small>wave ${g.wave} quality: ${esc(g.verdict)} &mdash; ${esc(g.reason)}</small>` : "";
}
function ago(t) { return t ? Math.round(Date.now() / 1000 - t) + " s ago" : ""; }
async function act(id, op) {
  try { await api(`/v1/rollouts/${encodeURIComponent(id)}/${op}`, "POST"); refresh(); }
  catch (e) { document.getElementById("err").textContent = e.message; }
}
async function refresh() {
  try {
    const [{rollouts}, {devices}, {versions}] = await Promise.all(
      [api("/v1/rollouts"), api("/v1/devices"), api("/v1/quality")]);
    document.getElementById("rollouts").innerHTML = rollouts.map(r => `<tr>
      <td>${esc(r.id)}</td><td>${esc(r.bundle)} v${esc(r.version)}</td><td>${esc(r.revision)}</td>
      <td>${esc(r.status)}${r.abort_reason ? " &mdash; " + esc(r.abort_reason) : ""}${gate(r)}</td>
      <td><span class="bar"><span class="${r.failed ? "bad" : ""}" style="width:${r.progress_percent}%"></span></span>
          ${r.progress_percent}%</td>
      <td>${r.wave}/${r.waves}</td><td>${r.succeeded} / ${r.failed} / ${r.total}</td>
      <td>${["pause", "resume", "abort", "rollback"].map(op =>
        `<button data-id="${esc(r.id)}" data-op="${op}">${op}</button>`).join("")}</td></tr>`).join("");
    document.getElementById("devices").innerHTML = devices.map(d => `<tr>
      <td>${esc(d.id)}</td><td class="${d.online ? "on" : "off"}">${d.online ? "online" : "offline"}</td>
      <td>${esc(d.model_name)} v${esc(d.model_version)}</td>
      <td>${esc(Object.entries(d.labels).map(([k, v]) => k + "=" + v).join(", "))}</td>
      <td>${d.escalation_rate == null ? "" : (100 * d.escalation_rate).toFixed(1) + "%"}</td>
      <td>${ago(d.last_seen)}</td>
      <td>${d.rollout ? esc(d.rollout.id + ": " + d.rollout.status) : ""}</td></tr>`).join("");
    document.getElementById("quality").innerHTML = versions.map(v => `<tr>
      <td>${esc(v.model_name)} v${esc(v.model_version)}</td><td>${v.devices}</td><td>${v.read}</td>
      <td>${rate(v.agreement)}</td><td>${v.checks} (${v.shed})</td>
      <td>${rate(v.escalation_rate)}</td><td>${rate(v.abstention_rate)}</td></tr>`).join("");
    document.getElementById("err").textContent = "";
  } catch (e) { document.getElementById("err").textContent = e.message; }
}
document.getElementById("rollouts").onclick = e => {
  const b = e.target.closest("button");
  if (b) act(b.dataset.id, b.dataset.op);
};
refresh();
setInterval(refresh, 3000);
</script>
</body>
</html>
"""
