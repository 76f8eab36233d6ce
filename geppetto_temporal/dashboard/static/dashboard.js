// geppetto dashboard: live refresh of the session list, a live view of a running
// inference (EventSource on the SSE endpoint), and buttons that post without
// leaving the page. Plain JavaScript, no build step, nothing fetched from elsewhere.
"use strict";

(() => {
  const REFRESH_MS = 2000;
  const FETCH_HEADERS = { "X-Requested-With": "fetch" };

  function repeat(task) {
    const loop = async () => {
      try {
        await task();
      } catch (err) {
        // A refresh cut short (the server restarting, the page being left) is retried.
        console.debug("refresh failed", err);
      } finally {
        setTimeout(loop, REFRESH_MS);
      }
    };
    setTimeout(loop, REFRESH_MS);
  }

  // ---- the session list (and the pending approvals: a table body naming its fragment) ----
  const rows = document.querySelector("tbody[data-refresh]");
  let refreshRows = async () => undefined;
  if (rows) {
    const stamp = document.getElementById("refreshed");
    refreshRows = async () => {
      // Not while a person types a reason: the fresh rows would drop it.
      const typing = () =>
        [...rows.querySelectorAll("input[type=text]")].some(
          (input) => input.value || input === document.activeElement,
        );
      if (typing()) return;
      try {
        const response = await fetch(rows.dataset.refresh, { headers: FETCH_HEADERS });
        if (!response.ok) {
          stamp.textContent = `refresh failed: HTTP ${response.status}`;
          return;
        }
        const html = await response.text();
        if (typing()) return; // began while the rows were fetched
        rows.innerHTML = html;
        stamp.textContent = `updated ${new Date().toLocaleTimeString()}`;
      } catch (err) {
        stamp.textContent = `refresh failed: ${err}`;
      }
    };
    repeat(refreshRows);
  }

  // ---- the pending approvals: approve or deny without leaving the page ---------------
  const approvals = document.getElementById("approval-rows");
  if (approvals) {
    const notice = document.getElementById("flash");
    approvals.addEventListener("submit", async (submit) => {
      const form = submit.target;
      if (!(form instanceof HTMLFormElement)) return;
      submit.preventDefault();
      // The clicked button says which decision (approve, always, deny).
      const body = new URLSearchParams(new FormData(form, submit.submitter));
      for (const button of form.querySelectorAll("button")) button.disabled = true;
      try {
        const response = await fetch(form.action, { method: "POST", headers: FETCH_HEADERS, body });
        const answer = await response
          .json()
          .catch(() => ({ ok: false, message: `HTTP ${response.status}` }));
        notice.hidden = false;
        notice.textContent = answer.message;
        notice.className = answer.ok ? "flash" : "flash error";
      } catch (err) {
        notice.hidden = false;
        notice.textContent = `${form.action}: ${err}`;
        notice.className = "flash error";
      } finally {
        for (const input of form.querySelectorAll("input[type=text]")) input.value = "";
        await refreshRows();
      }
    });
  }

  // ---- the session page ------------------------------------------------------------
  const page = document.getElementById("session-page");
  if (!page) return;
  const panel = document.getElementById("panel");
  const live = document.getElementById("live");
  const liveLog = document.getElementById("live-log");
  const liveId = document.getElementById("live-id");
  const liveStatus = document.getElementById("live-status");
  const flash = document.getElementById("flash");
  let source = null;
  let streaming = null;

  function placeLive() {
    const slot = panel.querySelector("#live-slot");
    if (slot && live.parentElement !== slot) slot.appendChild(live);
  }

  function setStatus(status) {
    liveStatus.textContent = status;
    liveStatus.className = `badge ${status}`;
  }

  function line(kind, text) {
    const div = document.createElement("div");
    div.className = `live-line ${kind}`;
    div.textContent = text;
    liveLog.appendChild(div);
    return div;
  }

  // The same form as the server-rendered conversation and the CLI: name(arg=value, ...).
  function toolCall(call) {
    let args;
    try {
      args = call.input.trim() ? JSON.parse(call.input) : {};
    } catch (err) {
      args = call.input;
    }
    const inner =
      args && typeof args === "object" && !Array.isArray(args)
        ? Object.entries(args)
            .map(([key, value]) => `${key}=${JSON.stringify(value)}`)
            .join(", ")
        : typeof args === "string"
          ? args
          : JSON.stringify(args);
    return `${call.name}(${inner})`;
  }

  // One line per compaction, as the CLI prints it (format_compaction in _render.py).
  function compaction(event) {
    const n = (value) => (value || 0).toLocaleString("en-US");
    const ofWindow = event.context_window ? ` of ${n(event.context_window)}` : "";
    const head = `context compacted${event.reason === "reactive" ? " after a refusal" : ""}`;
    const stubbed = (event.stubbed_tool_results || []).length;
    const truncated = (event.truncated_tool_results || []).length;
    const what = [];
    if (truncated) what.push(`truncated ${truncated} new tool results`);
    if (stubbed || event.stubbed_total) {
      what.push(`stubbed ${stubbed} tool results (${event.stubbed_total || 0} in all)`);
    }
    if (event.dropped_turns) {
      const summarized = event.summarized_turns ? `, ${event.summarized_turns} summarised` : "";
      what.push(`left out ${event.dropped_turns} turns${summarized}`);
    }
    if (event.dropped_steps) what.push(`left out ${event.dropped_steps} steps`);
    if (event.dropped_blocks) what.push(`${event.dropped_blocks} blocks out`);
    return (
      `${head}: ~${n(event.tokens_before)} → ~${n(event.tokens_after)} tokens${ofWindow}; ` +
      (what.join(", ") || "nothing left out")
    );
  }

  function segment(segments, event, kind) {
    const key = `${event.meta.message_id || ""}/${kind}`;
    let el = segments.get(key);
    if (!el) {
      el = document.createElement("pre");
      el.className = kind === "partial" ? "live-text" : "live-thinking";
      el.dataset.message = event.meta.message_id || "";
      liveLog.appendChild(el);
      segments.set(key, el);
    }
    return el;
  }

  function render(event, segments) {
    switch (event.type) {
      case "inference-started":
        line("prompt", `prompt: ${event.prompt || ""}`);
        break;
      case "start":
        if ((event.meta.attempt || 1) > 1) {
          line("info", `attempt ${event.meta.attempt}`);
          segments.delete(`${event.meta.message_id || ""}/partial`);
          segments.delete(`${event.meta.message_id || ""}/partial-thinking`);
        }
        break;
      case "partial":
      case "partial-thinking": {
        const el = segment(segments, event, event.type);
        el.textContent = event.completion || el.textContent + (event.delta || "");
        break;
      }
      case "final":
        if (event.text) segment(segments, event, "partial").textContent = event.text;
        break;
      case "tool-call":
        line("tool-call", `→ ${toolCall(event.tool_call)}`);
        break;
      case "tool-call-execution-result":
        line(event.is_error ? "error" : "tool-result", `← ${event.tool_result.result}`);
        break;
      case "interrupt":
        line("interrupted", "[interrupted]");
        break;
      case "error":
        line(
          "error",
          event.retrying
            ? `attempt ${event.meta.attempt || 1} failed, retrying: ${event.error_string}`
            : `error: ${event.error_string}`,
        );
        break;
      case "inference-finished":
        const detail = event.error && event.error !== event.status ? ` (${event.error})` : "";
        line(`finished ${event.status}`, `finished: ${event.status}${detail}`);
        break;
      case "context-compacted":
        line("info", compaction(event));
        break;
      case "info":
      case "log": {
        // The reader's own news that no worker answers: one line, kept current.
        const notice = event.data && event.data.notice;
        if (notice === "worker-wait" || notice === "worker-back") {
          let el = segments.get("worker-wait");
          if (!el) {
            el = line("info worker-wait", "");
            segments.set("worker-wait", el);
          }
          el.textContent = event.message;
          if (notice === "worker-back") segments.delete("worker-wait");
        } else if (event.message) {
          line("info", event.message);
        }
        break;
      }
      default:
        break;
    }
    liveLog.scrollTop = liveLog.scrollHeight;
  }

  function stop() {
    if (source) source.close();
    source = null;
  }

  function startLive(inferenceId, number) {
    stop();
    streaming = inferenceId;
    liveLog.textContent = "";
    liveId.textContent = inferenceId;
    setStatus("running");
    live.hidden = false;
    const segments = new Map();
    const es = new EventSource(`${page.dataset.eventsBase}${number}/events`);
    source = es;
    es.onmessage = (message) => {
      const event = JSON.parse(message.data);
      render(event, segments);
      if (event.type === "inference-finished") {
        es.close();
        if (source === es) source = null;
        setStatus(event.status);
        refreshPanel(true).catch(() => undefined);
      }
    };
    es.addEventListener("end", () => es.close());
    es.addEventListener("stream-error", (message) => {
      line("error", `stream error: ${JSON.parse(message.data).error}`);
      es.close();
    });
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED) line("error", "the event stream closed");
    };
  }

  function follow() {
    const current = panel.querySelector(".panel");
    if (!current) return;
    const active = current.dataset.active;
    const number = current.dataset.activeNumber;
    if (active && number && active !== streaming) startLive(active, number);
  }

  async function refreshPanel(force) {
    const response = await fetch(page.dataset.panel, { headers: FETCH_HEADERS });
    if (!response.ok) return;
    const html = await response.text();
    const holder = document.createElement("div");
    holder.innerHTML = html;
    const fresh = holder.querySelector(".panel");
    const current = panel.querySelector(".panel");
    if (!fresh) return;
    if (force || !current || fresh.dataset.version !== current.dataset.version) {
      live.remove();
      panel.replaceChildren(...holder.childNodes);
      placeLive();
    }
    follow();
  }

  document.addEventListener("submit", async (submit) => {
    const form = submit.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-async")) return;
    submit.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    const button = form.querySelector("button");
    if (button) button.disabled = true;
    try {
      const response = await fetch(form.action, {
        method: "POST",
        headers: FETCH_HEADERS,
        body: new URLSearchParams(new FormData(form)),
      });
      const answer = await response.json().catch(() => ({ ok: false, message: `HTTP ${response.status}` }));
      flash.hidden = false;
      flash.textContent = answer.message;
      flash.className = answer.ok ? "flash" : "flash error";
    } catch (err) {
      flash.hidden = false;
      flash.textContent = `${form.action}: ${err}`;
      flash.className = "flash error";
    } finally {
      await refreshPanel(true).catch(() => undefined);
    }
  });

  placeLive();
  follow();
  // A session whose workflow has ended changes no more: stop asking it (each
  // query of a closed session replays its history on a worker).
  repeat(async () => {
    const current = panel.querySelector(".panel");
    if (current && current.dataset.open === "false") return;
    await refreshPanel(false);
  });
})();
