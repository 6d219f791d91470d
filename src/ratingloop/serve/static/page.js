// The rating page (serve/page.py): chat with the served model, rate each answer, see what the ratings did.
// Chat: POST /v1/chat/completions with the whole conversation, streamed back as server-sent events.
// Ratings: POST /v1/feedback with the answer's feedback token, one request per rating, each confirmed.
// The thumbs-down reasons map to ratings as the module docstring of serve/page.py says (REASONS below).
(() => {
  "use strict";

  const REASONS = {
    "incorrect": { aspect: "accuracy" },
    "off-topic": { aspect: "relevance" },
    "unhelpful": { aspect: "helpfulness" },
    "too long": {},
    "unsafe": {},
    "other": {},
  };
  const LOW = 1; // a reason's aspect rating: the bottom of [1, 5]
  const KEY = "rl_admin_key"; // sessionStorage: the admin key (not public chat)
  const PANEL_REFRESH_MS = 60_000;
  const USER = "rl_user"; // localStorage: this browser's user id (not public chat; the cookie holds it otherwise)

  const state = { config: null, userId: null, messages: [], busy: false };
  const $ = (id) => document.getElementById(id);

  function randomId(prefix) {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes); // crypto.randomUUID needs a secure context; this does not
    return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function adminKey() {
    return state.config && state.config.needs_key ? sessionStorage.getItem(KEY) : null;
  }

  function adminHeaders() {
    const key = adminKey();
    return key ? { Authorization: "Bearer " + key } : {};
  }

  async function errorMessage(resp) {
    try {
      const body = await resp.json();
      return (body.error && body.error.message) || `${resp.status} ${resp.statusText}`;
    } catch (e) {
      return `${resp.status} ${resp.statusText}`;
    }
  }

  function showError(text) {
    $("chat-error").textContent = text;
    $("chat-error").hidden = !text;
  }

  function askForKey() {
    $("key-form").hidden = false;
    $("admin-key").focus();
  }

  // --- the panel: what the user's feedback did ------------------------------------------------------------

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "";
  }

  async function refreshPanel() {
    const panel = $("feedback-panel");
    if (!state.userId || (state.config.needs_key && !adminKey())) {
      panel.textContent = "";
      return;
    }
    let resp;
    try {
      resp = await fetch(`/v1/users/${encodeURIComponent(state.userId)}/feedback`, { headers: adminHeaders() });
    } catch (e) {
      return; // the server is unreachable; the chat says so when it is used
    }
    if (!resp.ok) {
      panel.textContent = "Your feedback: " + (await errorMessage(resp));
      return;
    }
    const summary = await resp.json();
    panel.replaceChildren();
    const count = document.createElement("span");
    count.dataset.testid = "feedback-count";
    count.textContent = String(summary.ratings);
    panel.append("Your feedback: ", count, ` rating${summary.ratings === 1 ? "" : "s"}`);
    if (summary.ratings === 0) {
      panel.append(". Rate an answer below to help train the next version. ", servedBy(summary));
      return;
    }
    panel.append(` on ${plural(summary.interactions_rated, "answer")}. `);
    const serving = summary.versions.filter((v) => v.serving);
    const note = document.createElement("span");
    note.dataset.testid = "feedback-versions";
    if (serving.length) {
      note.className = "serving";
      note.textContent = serving.map((v) => `Version ${v.id}, trained on them, is serving` +
        (v.went_live_at ? ` since ${when(v.went_live_at)}` : "")).join("; ") + ".";
    } else if (summary.versions.length) {
      const last = summary.versions[summary.versions.length - 1];
      note.textContent = `Version ${last.id} was trained on them (${last.status}); not serving yet.`;
    } else {
      note.textContent = "No version has been trained on them yet.";
    }
    panel.append(note, " ", servedBy(summary));
  }

  // which version answers this user now: a cohort's own version says so
  function servedBy(summary) {
    const el = document.createElement("span");
    el.dataset.testid = "served-by";
    el.textContent = summary.served_by === "base" ? "Your answers come from the base model." :
      `Your answers come from version ${summary.served_by}` +
      (summary.served_by_cohort == null ? "." : `, made for users who rate like you (cohort ${summary.served_by_cohort}).`);
    return el;
  }

  // --- chat -------------------------------------------------------------------------------------------------

  function bubble(role, text) {
    const el = document.createElement("div");
    el.className = `message ${role}`;
    el.dataset.testid = role === "user" ? "user-message" : "answer";
    el.textContent = text;
    $("messages").append(el);
    el.scrollIntoView({ block: "end" });
    return el;
  }

  function headerId(resp, name) {
    const value = resp.headers.get(name);
    try {
      return value && decodeURIComponent(value); // the server percent-encodes ids beyond ASCII
    } catch (e) {
      return value;
    }
  }

  // Reads the SSE stream into `el`; resolves with the answer's text, ids and token once [DONE] arrives.
  async function streamAnswer(resp, el) {
    const result = { text: "", interactionId: headerId(resp, "X-Interaction-Id"),
                     token: resp.headers.get("X-Feedback-Token"), version: null };
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event.split("\n").filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
        if (!data) continue;
        if (data === "[DONE]") return result;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message || "the server stopped the answer");
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          result.text += delta.content;
          el.textContent = result.text;
        }
        if (chunk.ratingloop) {
          result.interactionId = chunk.ratingloop.interaction_id || result.interactionId;
          result.token = chunk.ratingloop.feedback_token || result.token;
          result.version = chunk.ratingloop.version || null;
        }
      }
    }
    throw new Error("the answer was cut off before it finished; send the message again");
  }

  async function send(event) {
    event.preventDefault();
    const prompt = $("prompt");
    const text = prompt.value.trim();
    if (state.busy || !text) return;
    if (state.config.needs_key && !adminKey()) {
      askForKey();
      return;
    }
    showError("");
    state.busy = true;
    $("send").disabled = true;
    state.messages.push({ role: "user", content: text });
    const asked = bubble("user", text);
    const answer = bubble("answer", "");
    answer.classList.add("streaming");
    prompt.value = "";
    try {
      const body = { model: "active", messages: state.messages, stream: true };
      if (!state.config.public_chat && state.userId) body.user = state.userId;
      const resp = await fetch("/v1/chat/completions", {
        method: "POST", headers: { "Content-Type": "application/json", ...adminHeaders() }, body: JSON.stringify(body),
      });
      if (!resp.ok) {
        if (resp.status === 401 && state.config.needs_key) {
          sessionStorage.removeItem(KEY);
          askForKey();
        }
        throw new Error(await errorMessage(resp));
      }
      const result = await streamAnswer(resp, answer);
      answer.classList.remove("streaming");
      state.messages.push({ role: "assistant", content: result.text });
      attachRating(answer, result);
    } catch (e) {
      state.messages.pop(); // the question got no answer: it is not part of the conversation
      asked.remove();
      answer.remove();
      prompt.value = text;
      showError(e.message);
    } finally {
      state.busy = false;
      $("send").disabled = false;
    }
  }

  // --- rating one answer ------------------------------------------------------------------------------------

  function confirmation(ctx, text, status) {
    const item = document.createElement("li");
    item.dataset.testid = "confirmation";
    item.className = status;
    item.dataset.status = status;
    item.textContent = text;
    ctx.confirmations.append(item);
    return item;
  }

  async function rate(ctx, rating, label) {
    const item = confirmation(ctx, `${label}: sending\u2026`, "sending");
    const body = { interaction_id: ctx.interactionId, idempotency_key: randomId("page-"), ...rating };
    try {
      const resp = await fetch("/v1/feedback", {
        method: "POST", headers: { "Content-Type": "application/json", Authorization: "Bearer " + ctx.token },
        body: JSON.stringify(body),
      });
      if (!resp.ok) throw new Error(await errorMessage(resp));
      item.textContent = `\u2713 ${label}: saved`;
      item.className = item.dataset.status = "ok";
      refreshPanel();
      return true;
    } catch (e) {
      item.textContent = `\u2717 ${label}: not saved \u2014 ${e.message}`;
      item.className = item.dataset.status = "error";
      return false;
    }
  }

  function starButtons(ctx, group, aspect) {
    const buttons = [];
    for (let n = 1; n <= 5; n++) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = "\u2605";
      b.dataset.testid = aspect === "overall" ? `star-${n}` : `aspect-${aspect}-${n}`;
      b.setAttribute("aria-label", `${n} of 5`);
      b.addEventListener("click", async () => {
        if (ctx.stars[aspect] === n) return;
        const previous = ctx.stars[aspect];
        ctx.stars[aspect] = n;
        buttons.forEach((x, i) => x.classList.toggle("on", i < n));
        const rating = aspect === "overall" ? { kind: "stars", value: n, scale: [1, 5] }
          : { kind: "aspect", aspect, value: n, scale: [1, 5] };
        const label = aspect === "overall" ? `${n} of 5 stars` : `${aspect}: ${n} of 5`;
        if (!(await rate(ctx, rating, label)) && ctx.stars[aspect] === n) {
          ctx.stars[aspect] = previous;
          buttons.forEach((x, i) => x.classList.toggle("on", i < (previous || 0)));
        }
      });
      buttons.push(b);
    }
    group.append(...buttons);
  }

  function reasonRating(reason) {
    const aspect = REASONS[reason].aspect;
    if (aspect && state.config.aspects.includes(aspect)) {
      return { kind: "aspect", aspect, value: LOW, scale: [1, 5] };
    }
    return { kind: "comment", text: `reason: ${reason}` };
  }

  function attachRating(answer, result) {
    answer.dataset.interactionId = result.interactionId || "";
    if (result.version !== null) {
      const v = document.createElement("p");
      v.className = "version";
      v.dataset.testid = "answer-version";
      v.textContent = `answered by ${result.version || "the base model"}`;
      answer.after(v);
    }
    const node = $("rating-template").content.firstElementChild.cloneNode(true);
    const q = (testid) => node.querySelector(`[data-testid="${testid}"]`);
    const ctx = { interactionId: result.interactionId, token: result.token, confirmations: q("confirmations"),
                  thumb: null, stars: {}, reasons: new Set() };
    node.dataset.interactionId = ctx.interactionId || "";
    (answer.nextElementSibling && answer.nextElementSibling.classList.contains("version")
      ? answer.nextElementSibling : answer).after(node);
    if (!ctx.interactionId || !ctx.token) {
      node.querySelectorAll("button, textarea").forEach((el) => { el.disabled = true; });
      confirmation(ctx, "this answer came without a feedback token; it cannot be rated", "error");
      return;
    }

    node.querySelectorAll(".thumb").forEach((b) => b.addEventListener("click", async () => {
      const value = Number(b.dataset.thumb);
      if (ctx.thumb === value) return;
      ctx.thumb = value;
      node.querySelectorAll(".thumb").forEach((x) => x.setAttribute("aria-pressed", String(x === b)));
      q("reasons").hidden = value !== -1;
      await rate(ctx, { kind: "thumbs", value }, value === 1 ? "thumbs up" : "thumbs down");
    }));

    starButtons(ctx, q("stars"), "overall");
    const rows = node.querySelector(".aspect-rows");
    for (const aspect of state.config.aspects) {
      const row = document.createElement("div");
      row.className = "row";
      const name = document.createElement("span");
      name.className = "aspect-name";
      name.textContent = aspect;
      const group = document.createElement("span");
      group.className = "stars";
      group.dataset.aspect = aspect;
      starButtons(ctx, group, aspect);
      row.append(name, group);
      rows.append(row);
    }
    if (!state.config.aspects.length) q("aspects").hidden = true;

    node.querySelectorAll(".chip").forEach((b) => b.addEventListener("click", async () => {
      const reason = b.dataset.reason;
      if (ctx.reasons.has(reason)) return;
      ctx.reasons.add(reason);
      b.setAttribute("aria-pressed", "true");
      if (reason === "other") q("comment").focus();
      if (!(await rate(ctx, reasonRating(reason), `reason: ${reason}`))) {
        ctx.reasons.delete(reason);
        b.setAttribute("aria-pressed", "false");
      }
    }));

    const sendText = (kind, box, label) => async () => {
      const text = box.value.trim();
      if (!text) return;
      if (await rate(ctx, { kind, text }, label)) box.value = "";
    };
    q("comment-send").addEventListener("click", sendText("comment", q("comment"), "comment"));
    q("correction-send").addEventListener("click", sendText("correction", q("correction"), "better answer"));
  }

  // --- start ------------------------------------------------------------------------------------------------

  async function start() {
    const resp = await fetch("/v1/page/config");
    if (!resp.ok) {
      showError("the page cannot start: " + (await errorMessage(resp)));
      return;
    }
    state.config = await resp.json();
    if (state.config.public_chat) {
      state.userId = state.config.user_id;
      $("who").textContent = "You chat anonymously; your ratings are kept under a pseudonym.";
    } else {
      state.userId = localStorage.getItem(USER) || randomId("page-");
      localStorage.setItem(USER, state.userId);
    }
    $("key-form").hidden = !(state.config.needs_key && !adminKey());
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY, $("admin-key").value);
      $("admin-key").value = "";
      $("key-form").hidden = true;
      showError("");
      refreshPanel();
    });
    $("chat-form").addEventListener("submit", send);
    $("new-chat").addEventListener("click", () => {
      if (state.busy) return;
      state.messages = []; // the model sees only this conversation; the ratings already sent stay
      $("messages").replaceChildren();
      showError("");
      $("prompt").focus();
    });
    $("prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) {
        event.preventDefault();
        $("chat-form").requestSubmit();
      }
    });
    document.body.dataset.ready = "true"; // tests wait for this
    refreshPanel();
    // a version trained on the user's ratings may go live while the page is open
    setInterval(() => { if (document.visibilityState === "visible") refreshPanel(); }, PANEL_REFRESH_MS);
  }

  start();
})();
