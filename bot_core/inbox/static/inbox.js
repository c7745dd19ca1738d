// Live updates for the inbox over server-sent events. A list page is sent its live region by the
// server whenever it changes (at most once a second); a conversation page hears which
// conversations changed and fetches its live region again when it is one of them. The reply box
// is outside that region, so what an operator is typing survives an update.
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

  function show(html) {
    const focused = live.contains(document.activeElement) ? document.activeElement.id : "";
    live.innerHTML = html;
    const state = live.querySelector("[data-opted-out]");
    if (state) {
      for (const control of document.querySelectorAll("#reply, #send")) control.disabled = state.dataset.optedOut === "1";
    }
    if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
  }

  let events;
  if (!conversation) {
    // The stream names the list this page shows (its filter, search and page) and starts with
    // it, which catches what changed between rendering this page (or losing the stream) and
    // subscribing. Open lists then cost the server one render a change and no requests.
    const query = new URLSearchParams(window.location.search);
    query.delete("partial");
    query.set("list", "1");
    events = new EventSource(`${document.body.dataset.base}/events?${query}`);
    events.addEventListener("list", (event) => {
      show(event.data);
      document.documentElement.dataset.events = "open";
    });
  } else {
    let busy = false;
    let again = false;

    async function refresh() {
      if (busy) { again = true; return; }
      busy = true;
      try {
        const url = new URL(window.location.href);
        url.searchParams.set("partial", "1");
        const response = await fetch(url, { credentials: "same-origin" });
        if (response.redirected || !response.ok) { window.location.reload(); return; }
        show(await response.text());
      } finally {
        busy = false;
        if (again) { again = false; refresh(); }
      }
    }

    events = new EventSource(document.body.dataset.base + "/events");
    events.addEventListener("change", (event) => {
      if (JSON.parse(event.data).includes(conversation)) refresh();
    });
    // What changed between rendering this page (or losing the stream) and subscribing is caught
    // by fetching the live region once more whenever the stream (re)opens.
    let opened = false;
    events.addEventListener("open", () => {
      if (opened) refresh(); else refresh().then(() => { document.documentElement.dataset.events = "open"; });
      opened = true;
    });
  }
  // A refused stream (signed out, operator removed) is closed for good: reloading the page
  // goes to the login page.
  events.addEventListener("error", () => {
    if (events.readyState === EventSource.CLOSED) window.location.reload();
  });
})();
