// Live updates for the inbox: the server names changed conversations over server-sent events,
// and this page fetches its live region again when one of them is on it. The reply box is
// outside that region, so what an operator is typing survives a refresh.
(() => {
  "use strict";
  const reply = document.getElementById("reply");
  if (reply) {
    reply.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) reply.form.requestSubmit();
    });
  }
  const live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  const conversation = Number(live.dataset.conversation || 0);
  let busy = false;
  let again = false;

  function sync() {
    const state = live.querySelector("[data-opted-out]");
    if (!state) return;
    for (const control of document.querySelectorAll("#reply, #send")) control.disabled = state.dataset.optedOut === "1";
  }

  // A busy list changes at every poll: refetch it at most once a second (a conversation page at
  // once, its changes are rare), so open inboxes stay cheap for the server. Every open list hears
  // of a change at the same instant: each waits a random part of a quarter second more, so their
  // fetches do not queue up together in front of the webhooks.
  const gap = conversation ? 0 : 1000;
  const spread = conversation ? 0 : 250;
  let last = 0;

  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    const wait = Math.max(last + gap - Date.now(), 0) + Math.random() * spread;
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    last = Date.now();
    const focused = live.contains(document.activeElement) ? document.activeElement.id : "";
    try {
      const url = new URL(window.location.href);
      url.searchParams.set("partial", "1");
      const response = await fetch(url, { credentials: "same-origin" });
      if (response.redirected || !response.ok) { window.location.reload(); return; }
      live.innerHTML = await response.text();
      sync();
      if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  }

  const events = new EventSource(document.body.dataset.base + "/events");
  events.addEventListener("change", (event) => {
    const ids = JSON.parse(event.data);
    if (!conversation || ids.includes(conversation)) refresh();
  });
  // What changed between rendering this page (or losing the stream) and subscribing is caught
  // by fetching the live region once more whenever the stream (re)opens.
  let opened = false;
  events.addEventListener("open", () => {
    if (opened) refresh(); else refresh().then(() => { document.documentElement.dataset.events = "open"; });
    opened = true;
  });
})();
