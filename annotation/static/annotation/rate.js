// The rater page: one item at a time, the next one preloaded, answers sent exactly once.
//
// The speaker video is the clock: the candidate videos (muted) follow it, corrected when they
// drift. Answers unlock after one full viewing. Every answer gets an idempotency key when it is
// made and waits in localStorage until the server has it, so a lost connection or a reload
// resends the same answer and never a second one.
"use strict";

(function () {
  const cfg = JSON.parse(document.getElementById("rate-config").textContent);
  const $ = (sel) => document.querySelector(sel);
  const pendingKey = "bc-pending-" + cfg.slug;
  const DRIFT_S = 0.04; // a candidate further than this from the speaker is nudged (rate)
  const JUMP_S = 0.3; // ... and further than this is moved (a seek)
  const HOLD_MAX_MS = 4000; // the speaker waits this long at most for a candidate's data
  const MAX_EVENTS = 600; // playback events sent with an answer (the server takes 64 KB)

  let current = null; // {data, view, shownAt, unlockedAt, events, viewed}
  let upcoming = null; // {data, view} being preloaded
  let choice = null; // pairwise choice waiting for a strength
  let busy = false;
  let heartbeatTimer = null;
  let retryTimer = null; // asks for items again while they are held by others

  async function post(url, body) {
    const res = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      // The rater token (signed by the page's server) stands for the session on these calls.
      headers: { "Content-Type": "application/json", "Authorization": "Rater " + cfg.token },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (res.status === 401) {
      // The token is dated: a page left open past its life reloads for a fresh one (answers
      // waiting in localStorage are sent after the reload).
      location.reload();
      await new Promise(() => {});
    }
    return { status: res.status, data };
  }

  let offlineBanner = false; // the banner shown says the connection is lost

  function banner(text, kind) {
    const el = $("#banner");
    el.textContent = text || "";
    el.className = "banner " + (kind || "");
    el.hidden = !text;
    offlineBanner = false;
  }

  function connectionLost(text) {
    banner(text, "error");
    offlineBanner = true;
  }

  function connectionBack() {
    if (offlineBanner) banner("");
  }

  // Wait before trying again; the browser coming back online ends the wait at once.
  function retryPause(ms) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        window.removeEventListener("online", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      window.addEventListener("online", done);
    });
  }

  // -- building one item's videos --------------------------------------------------------------

  function video(src, poster, muted) {
    const v = document.createElement("video");
    v.src = src;
    v.poster = poster;
    v.preload = "auto";
    v.playsInline = true;
    v.muted = muted;
    v.controls = false;
    v.disablePictureInPicture = true;
    return v;
  }

  function buildView(data) {
    const speaker = video(data.speaker.video, data.speaker.poster, false);
    const clips = data.clips.map((c) => video(c.video, c.poster, true));
    return { speaker, clips };
  }

  function sideName(i, n) {
    if (n === 2) return i === 0 ? "Left" : "Right";
    return String.fromCharCode(65 + i);
  }

  function mount(entry) {
    const slot = $("#speaker-slot");
    slot.replaceChildren(entry.view.speaker);
    const box = $("#candidates");
    box.replaceChildren();
    entry.view.clips.forEach((v, i) => {
      const fig = document.createElement("figure");
      fig.className = "candidate";
      const cap = document.createElement("figcaption");
      cap.textContent = (cfg.protocol === "pairwise" ? (i + 1) + " · " : "") +
        sideName(i, entry.view.clips.length);
      fig.append(v, cap);
      box.append(fig);
    });
    wireClock(entry);
    if (cfg.protocol === "group") buildScoreGrid(entry.view.clips.length);
    else buildReasons();
    setVoting(false);
    $("#watch-hint").hidden = false;
    playLabel("play");
    $("#play").disabled = false;
  }

  function kbd(text) {
    const k = document.createElement("kbd");
    k.textContent = text;
    return k;
  }

  // -- one clock ---------------------------------------------------------------------------------
  //
  // The speaker plays; the candidates follow. Small drift is taken out by nudging a candidate's
  // playback rate (seamless); only a large gap is closed by a seek, because a seek in these
  // clips decodes from the last key frame and would otherwise make the candidate fall behind
  // again at once. A candidate waiting for data holds the speaker until it can play.

  function log(entry, type, index, el) {
    entry.events.push({
      t: Math.round(performance.now() - entry.shownAt), e: type, v: index,
      p: Math.round((el ? el.currentTime : 0) * 1000) / 1000,
    });
  }

  function playLabel(state) {
    const text = { play: "▶ Play", pause: "❚❚ Pause", replay: "↻ Replay" }[state];
    $("#play").replaceChildren(text + " ", kbd("space"));
  }

  function wireClock(entry) {
    const master = entry.view.speaker;
    const clips = entry.view.clips;
    entry.held = new Set(); // candidates the speaker waits for
    entry.holding = false;
    entry.heldSince = 0;
    entry.ownPauses = 0; // pause / play events the page itself caused by holding the speaker
    entry.ownPlays = 0;
    [master, ...clips].forEach((v, i) => {
      ["play", "pause", "seeking", "waiting", "stalled", "ended", "error"].forEach((type) =>
        v.addEventListener(type, () => {
          if (current !== entry) return;
          // The speaker's pause and play around a hold are logged as hold and resume, and the
          // pause that comes with the end is no pause of the rater's.
          // (Counted rather than read from entry.holding: the events arrive after the calls,
          // and a short hold may be over by the time its pause is dispatched.)
          if (i === 0 && type === "pause" && entry.ownPauses > 0) { entry.ownPauses--; return; }
          if (i === 0 && type === "play" && entry.ownPlays > 0) { entry.ownPlays--; return; }
          if (type === "pause" && v.ended) return;
          log(entry, type === "waiting" ? "stall" : type, i, v);
        }));
    });
    const follow = () => clips.forEach((c) => {
      if (c.ended && master.currentTime < c.duration - 0.05) c.currentTime = master.currentTime;
      else if (Math.abs(c.currentTime - master.currentTime) > JUMP_S) c.currentTime = master.currentTime;
      c.playbackRate = 1;
      c.play().catch(() => {});
    });
    master.addEventListener("play", () => { if (current === entry) playLabel("pause"); });
    master.addEventListener("playing", () => {
      if (entry.holding) { entry.holding = false; entry.held.clear(); }
      follow();
    });
    master.addEventListener("waiting", () => clips.forEach((c) => c.pause()));
    master.addEventListener("pause", () => {
      clips.forEach((c) => c.pause());
      if (current === entry && !entry.holding && !master.ended) playLabel("play");
    });
    master.addEventListener("seeked", () => clips.forEach((c) => { c.currentTime = master.currentTime; }));
    master.addEventListener("ended", () => {
      clips.forEach((c) => c.pause());
      if (current !== entry) return;
      playLabel("replay");
      if (!entry.viewed) {
        entry.viewed = true;
        entry.unlockedAt = performance.now();
        setVoting(true);
        $("#watch-hint").hidden = true;
      }
    });
    const release = () => {
      entry.holding = false;
      entry.held.clear();
      log(entry, "resume", 0, master);
      if (master.paused) entry.ownPlays++;
      master.play().catch(() => {});
    };
    clips.forEach((c, i) => {
      c.addEventListener("waiting", () => {
        if (current !== entry || master.paused || master.ended) return;
        entry.held.add(c);
        if (!entry.holding) {
          entry.holding = true;
          entry.heldSince = performance.now();
          log(entry, "hold", i + 1, c);
          entry.ownPauses++;
          master.pause();
        }
      });
      c.addEventListener("canplay", () => {
        entry.held.delete(c);
        if (entry.holding && !entry.held.size) release();
      });
    });
    const tick = () => {
      if (current !== entry) return;
      if (entry.holding) {
        // canplay does not come when the data never ran out; give up on a stuck hold.
        const ready = [...entry.held].every((c) => c.readyState >= 3);
        if (ready || performance.now() - entry.heldSince > HOLD_MAX_MS) release();
      } else if (!master.paused && !master.seeking && master.readyState >= 3) {
        clips.forEach((c) => {
          if (c.ended || c.paused || c.seeking) return;
          const d = c.currentTime - master.currentTime;
          if (Math.abs(d) > JUMP_S) {
            c.playbackRate = 1;
            c.currentTime = master.currentTime;
          } else if (Math.abs(d) > DRIFT_S) {
            c.playbackRate = Math.min(1.25, Math.max(0.75, 1 - 2 * d));
          } else if (Math.abs(d) < DRIFT_S / 2 && c.playbackRate !== 1) {
            c.playbackRate = 1;
          }
        });
      }
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  }

  function togglePlay() {
    if (!current) return;
    const master = current.view.speaker;
    if (current.holding) { // waiting for a candidate: the rater wants it paused
      current.holding = false;
      current.held.clear();
      log(current, "pause", 0, master);
      playLabel("play");
    } else if (master.ended || (master.paused && master.currentTime >= master.duration - 0.01)) {
      log(current, "replay", 0, master);
      master.currentTime = 0;
      current.view.clips.forEach((c) => { c.currentTime = 0; });
      master.play().catch(() => {});
    } else if (master.paused) {
      master.play().catch(() => {});
    } else {
      master.pause();
    }
  }

  // -- answering -------------------------------------------------------------------------------

  function setVoting(on) {
    document.querySelectorAll("#vote button").forEach((b) => {
      if (b.id === "send-scores") b.disabled = !on || !scoresComplete();
      else if (!b.closest("#strength")) b.disabled = !on;
    });
    document.querySelectorAll("#score-grid input").forEach((i) => { i.disabled = !on; });
    $("#vote").classList.toggle("locked", !on);
  }

  function buildReasons() {
    const box = $("#reasons");
    box.replaceChildren();
    if (!cfg.reasons.length) return;
    const label = document.createElement("span");
    label.textContent = "Why? (optional) ";
    box.append(label);
    cfg.reasons.forEach((r) => {
      const l = document.createElement("label");
      const cb = document.createElement("input");
      cb.type = "checkbox";
      cb.value = r;
      l.append(cb, " " + r);
      box.append(l);
    });
  }

  function buildScoreGrid(n) {
    const grid = $("#score-grid");
    grid.replaceChildren();
    const table = document.createElement("table");
    const head = document.createElement("tr");
    head.append(document.createElement("th"));
    for (let i = 0; i < n; i++) {
      const th = document.createElement("th");
      th.textContent = sideName(i, n);
      head.append(th);
    }
    table.append(head);
    cfg.criteria.forEach((criterion, row) => {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      th.textContent = criterion;
      tr.append(th);
      for (let col = 0; col < n; col++) {
        const td = document.createElement("td");
        const input = document.createElement("input");
        input.type = "number";
        input.min = 1; input.max = 5; input.step = 1;
        input.inputMode = "numeric";
        input.dataset.row = row; input.dataset.col = col;
        input.setAttribute("aria-label", criterion + " for " + sideName(col, n));
        input.addEventListener("input", () => {
          const v = parseInt(input.value, 10);
          if (!(v >= 1 && v <= 5)) input.value = "";
          $("#send-scores").disabled = !scoresComplete();
        });
        td.append(input);
        tr.append(td);
      }
      table.append(tr);
    });
    grid.append(table);
  }

  function scoresComplete() {
    const inputs = [...document.querySelectorAll("#score-grid input")];
    return inputs.length > 0 && inputs.every((i) => i.value >= 1 && i.value <= 5);
  }

  function collectScores() {
    const n = current.view.clips.length;
    const out = Array.from({ length: n }, () => ({}));
    document.querySelectorAll("#score-grid input").forEach((i) => {
      out[+i.dataset.col][cfg.criteria[+i.dataset.row]] = parseInt(i.value, 10);
    });
    return out;
  }

  function playbackEvidence(entry) {
    const quality = [entry.view.speaker, ...entry.view.clips].map((v) => {
      const q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : null;
      return q ? { dropped: q.droppedVideoFrames, total: q.totalVideoFrames } : null;
    });
    const count = (type) => entry.events.filter((e) => e.e === type && e.v === 0).length;
    // A long session (many replays, a poor connection) is kept to its start and its end.
    const ev = entry.events;
    const half = MAX_EVENTS / 2;
    const events = ev.length <= MAX_EVENTS ? ev : ev.slice(0, half).concat(ev.slice(-half));
    return {
      events, events_dropped: ev.length - events.length,
      plays: count("play"), pauses: count("pause"), seeks: count("seeking"),
      replays: count("replay"), stalls: entry.events.filter((e) => e.e === "stall").length,
      holds: entry.events.filter((e) => e.e === "hold").length,
      quality,
    };
  }

  function answer(body) {
    if (!current || !current.viewed || busy) return;
    const now = performance.now();
    const item = {
      token: current.data.id,
      body: Object.assign({
        idempotency_key: crypto.randomUUID ? crypto.randomUUID() : uuid4(),
        decision_ms: Math.round(now - current.unlockedAt),
        viewing_ms: Math.round(now - current.shownAt),
        playback: playbackEvidence(current),
      }, body),
    };
    const queue = pending();
    queue.push(item);
    localStorage.setItem(pendingKey, JSON.stringify(queue));
    current.view.speaker.pause();
    setVoting(false);
    flushThenAdvance();
  }

  function uuid4() {
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function pending() {
    try { return JSON.parse(localStorage.getItem(pendingKey) || "[]"); } catch (e) { return []; }
  }

  // Send every waiting answer; retry network failures and server errors with back-off. A 4xx
  // is final (already answered in another tab, lease expired, …): the answer is dropped.
  // Returns the rater's next items when the last answer's reply carried them.
  async function flush() {
    let delay = 1000;
    let following = null;
    for (;;) {
      const queue = pending();
      if (!queue.length) return following;
      const item = queue[0];
      let res = null;
      try {
        res = await post(cfg.api.judgment.replace("TOKEN", item.token), item.body);
      } catch (e) {
        res = null;
      }
      if (res && res.status < 500) {
        connectionBack();
        localStorage.setItem(pendingKey, JSON.stringify(pending().slice(1)));
        following = (res.status < 300 && res.data && res.data.next) || null;
        if (res.status === 409 && res.data && res.data.error === "already_answered") {
          banner("That item was already answered (in another tab?). Here is the next one.", "info");
        } else if (res.status === 410) {
          banner("That item was open too long and was given to someone else. Here is the next one.", "info");
        } else if (res.status >= 400) {
          banner("That answer could not be stored: " + ((res.data && res.data.detail) || res.status), "error");
        }
        delay = 1000;
        continue;
      }
      connectionLost("Connection lost. Your answer is kept and will be sent when the connection is back…");
      await retryPause(delay);
      delay = Math.min(delay * 2, 15000);
    }
  }

  async function flushThenAdvance() {
    busy = true;
    try {
      await loadNext(await flush());
    } finally {
      busy = false;
    }
  }

  // -- leases ----------------------------------------------------------------------------------

  // Show the rater's next items: those an answer's reply carried, or asked for.
  async function loadNext(carried) {
    let res = carried ? { status: 200, data: carried } : null;
    for (let delay = 1000; !res; delay = Math.min(delay * 2, 15000)) {
      try { res = await post(cfg.api.next); } catch (e) { res = null; }
      if (res && res.status < 500) break;
      res = null;
      connectionLost("Connection lost. Trying again…");
      await retryPause(delay);
    }
    connectionBack();
    if (res.status !== 200) {
      finish("Cannot continue", (res.data && res.data.detail) || "Please reload the page.");
      return;
    }
    const data = res.data;
    updateProgress(data.done, data.quota);
    if (data.warning) banner(data.warning, "warn");
    if (data.state !== "rating") {
      // The server says why there is no item (detail). Waiting (the items left are held by
      // other raters for now) and a cool-down are not the end: the page asks again by itself
      // and shows no completion code.
      const titles = {
        finished: "Thank you!", blocked: "Thank you", paused: "Paused",
        consent: "Consent needed", waiting: "Please wait a moment", cool_down: "Please come back later",
      };
      const title = titles[data.state] || "Done";
      if (data.state === "waiting" || data.state === "cool_down") {
        hold(title, data.detail || "", data.retry_after);
        return;
      }
      finish(title, data.detail || "", data.completion_code, data.completion_url);
      return;
    }
    $("#stage").hidden = false;
    $("#done").hidden = true;
    const [first, second] = data.assignments;
    let view = null;
    if (upcoming && upcoming.data.id === first.id) view = upcoming.view;
    current = {
      data: first, view: view || buildView(first), shownAt: performance.now(),
      unlockedAt: 0, events: [], viewed: false,
    };
    mount(current);
    upcoming = null;
    $("#preload").replaceChildren();
    if (second) {
      upcoming = { data: second, view: buildView(second) };
      $("#preload").append(upcoming.view.speaker, ...upcoming.view.clips);
    }
    startHeartbeat();
  }

  function startHeartbeat() {
    if (heartbeatTimer) clearInterval(heartbeatTimer);
    heartbeatTimer = setInterval(async () => {
      if (!current || document.visibilityState !== "visible" || busy) return;
      try {
        const res = await post(cfg.api.heartbeat.replace("TOKEN", current.data.id));
        if (res.status === 410 || res.status === 409) {
          // a paused or closed campaign says so; the next call shows what the rater gets now
          const said = res.data && /^campaign_/.test(res.data.error || "") && res.data.detail;
          banner(said || "This item was open too long; loading a fresh one.", "info");
          if (!busy) { busy = true; try { await loadNext(); } finally { busy = false; } }
        }
      } catch (e) { /* the next beat will try again */ }
    }, cfg.heartbeatMs);
  }

  function updateProgress(done, quota) {
    const pct = quota ? Math.min(100, (100 * done) / quota) : 0;
    $("#progress-fill").style.width = pct + "%";
    $("#progress-text").textContent = done + " / " + quota;
    const bar = $("#progress");
    bar.setAttribute("aria-valuenow", done);
    bar.setAttribute("aria-valuemax", quota);
  }

  function showMessage(title, text) {
    if (heartbeatTimer) clearInterval(heartbeatTimer);
    if (retryTimer) clearTimeout(retryTimer);
    retryTimer = null;
    current = null;
    $("#stage").hidden = true;
    $("#done").hidden = false;
    $("#done-title").textContent = title;
    $("#done-text").textContent = text;
    $("#completion").hidden = true;
    $("#completion-link").hidden = true;
  }

  // No item for now: say why, and ask again after the seconds the server gave.
  function hold(title, text, seconds) {
    showMessage(title, text);
    const again = async () => {
      if (busy) { retryTimer = setTimeout(again, 1000); return; }
      retryTimer = null;
      busy = true;
      try { await loadNext(); } finally { busy = false; }
    };
    retryTimer = setTimeout(again, Math.max(2, seconds || 60) * 1000);
  }

  function finish(title, text, code, url) {
    showMessage(title, text);
    if (code) { $("#completion").hidden = false; $("#completion-code").textContent = code; }
    if (url) {
      $("#completion-link").hidden = false;
      $("#completion-url").href = url.includes("{code}") ? url.replace("{code}", encodeURIComponent(code || "")) : url;
    }
  }

  // -- keys and buttons --------------------------------------------------------------------------

  function choose(value) {
    if (!current || !current.viewed || busy) return;
    if (cfg.askStrength && (value === "left" || value === "right")) {
      choice = value;
      $("#strength").hidden = false;
      document.querySelectorAll(".choice").forEach((b) =>
        b.classList.toggle("picked", b.dataset.choice === value));
      return;
    }
    send(value, null);
  }

  function send(value, strength) {
    const reasons = [...document.querySelectorAll("#reasons input:checked")].map((i) => i.value);
    $("#strength").hidden = true;
    choice = null;
    document.querySelectorAll(".choice").forEach((b) => b.classList.remove("picked"));
    const body = { choice: value, reasons };
    if (strength) body.strength = strength;
    answer(body);
  }

  function cancelStrength() {
    choice = null;
    $("#strength").hidden = true;
    document.querySelectorAll(".choice").forEach((b) => b.classList.remove("picked"));
  }

  function sendScores() {
    if (!scoresComplete()) return;
    answer({ scores: collectScores() });
  }

  function moveFocus(dRow, dCol) {
    const el = document.activeElement;
    let row = 0, col = 0;
    if (el && el.dataset && el.dataset.row !== undefined) { row = +el.dataset.row + dRow; col = +el.dataset.col + dCol; }
    const target = document.querySelector(`#score-grid input[data-row="${row}"][data-col="${col}"]`);
    if (target) target.focus();
  }

  document.addEventListener("keydown", (ev) => {
    const help = $("#help");
    if (ev.key === "?" || (ev.key === "i" && !help.open)) {
      ev.preventDefault();
      if (help.open) help.close(); else help.showModal();
      return;
    }
    if (help.open || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === " " || ev.code === "Space") {
      ev.preventDefault();
      togglePlay();
      return;
    }
    if (cfg.protocol === "pairwise") {
      if (choice) {
        if (["1", "2", "3"].includes(ev.key)) { ev.preventDefault(); send(choice, +ev.key); }
        else if (ev.key === "Escape") cancelStrength();
        return;
      }
      const map = { "1": "left", "2": "right", "3": "tie", "4": "both_bad" };
      if (map[ev.key]) { ev.preventDefault(); choose(map[ev.key]); }
      return;
    }
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    if (moves[ev.key]) { ev.preventDefault(); moveFocus(...moves[ev.key]); return; }
    if (ev.key === "Enter") { ev.preventDefault(); sendScores(); return; }
    const el = document.activeElement;
    if (/^[1-5]$/.test(ev.key) && el && el.dataset && el.dataset.row !== undefined && !el.disabled) {
      ev.preventDefault();
      el.value = ev.key;
      el.dispatchEvent(new Event("input"));
      moveFocus(1, 0);
    }
  });

  $("#play").addEventListener("click", togglePlay);
  $("#help-button").addEventListener("click", () => $("#help").showModal());
  document.querySelectorAll(".choice").forEach((b) =>
    b.addEventListener("click", () => choose(b.dataset.choice)));
  document.querySelectorAll("#strength button").forEach((b) =>
    b.addEventListener("click", () => {
      if (b.dataset.strength === "cancel") cancelStrength(); else if (choice) send(choice, +b.dataset.strength);
    }));
  const sendButton = $("#send-scores");
  if (sendButton) sendButton.addEventListener("click", sendScores);
  window.addEventListener("online", () => { if (pending().length && !busy) flushThenAdvance(); });

  // Start: answers left from a lost connection go first, then the first item. The
  // instructions open before the first item of a fresh visit.
  if (!sessionStorage.getItem("bc-seen-help-" + cfg.slug)) {
    sessionStorage.setItem("bc-seen-help-" + cfg.slug, "1");
    $("#help").showModal();
  }
  flushThenAdvance();
})();
