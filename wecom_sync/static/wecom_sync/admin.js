/* wecom_sync admin helpers: generate a Token / EncodingAESKey in the browser, copy the callback URL. */
(function () {
  "use strict";
  var ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

  function randomString(length) {
    var out = "";
    var bytes = new Uint8Array(length * 2);
    while (out.length < length) {
      window.crypto.getRandomValues(bytes);
      for (var i = 0; i < bytes.length && out.length < length; i++) {
        if (bytes[i] < 248) { out += ALPHABET[bytes[i] % 62]; }
      }
    }
    return out;
  }

  function addGenerateButton(input) {
    var kind = input.getAttribute("data-wecom-generate");
    var button = document.createElement("button");
    button.type = "button";
    button.className = "button";
    button.style.marginLeft = "6px";
    button.textContent = input.getAttribute("data-wecom-label") || "Generate";
    button.setAttribute("data-wecom-generated-for", input.name);
    button.addEventListener("click", function () {
      input.type = "text"; // a generated value must be visible so it can be pasted into the WeCom console
      input.value = randomString(kind === "aeskey" ? 43 : 32);
      input.dispatchEvent(new Event("change"));
    });
    input.insertAdjacentElement("afterend", button);
  }

  function pollRun(box) {
    var url = box.getAttribute("data-progress-url");
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { return r.json(); })
        .then(function (data) {
          var status = document.getElementById("wecom-run-status");
          status.textContent = data.status_display;
          status.setAttribute("data-status", data.status);
          document.getElementById("wecom-run-counts").textContent = data.done + "/" + data.total;
          document.getElementById("wecom-progress-bar").style.width = (data.percent || 0) + "%";
          document.getElementById("wecom-run-message").textContent = data.message || "";
          var counters = document.getElementById("wecom-run-counters");
          counters.textContent = "";
          Object.keys(data.counters).forEach(function (key) {
            if (!data.counters[key]) { return; }
            var span = document.createElement("span");
            span.className = "wecom-counter";
            span.setAttribute("data-counter", key);
            span.textContent = ((data.counter_labels || {})[key] || key) + ": " + data.counters[key];
            counters.appendChild(span);
          });
          if (data.finished) {
            box.setAttribute("data-finished", "1");
            // Reload once so the change list and approval buttons appear.
            window.location.reload();
          } else {
            window.setTimeout(tick, 1000);
          }
        })
        .catch(function () { window.setTimeout(tick, 3000); });
    }
    window.setTimeout(tick, 500);
  }

  function init() {
    var run = document.getElementById("wecom-run");
    if (run && run.getAttribute("data-finished") !== "1") { pollRun(run); }
    document.querySelectorAll("[data-wecom-generate]").forEach(addGenerateButton);
    document.querySelectorAll("[data-wecom-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var text = document.getElementById(button.getAttribute("data-wecom-copy")).textContent;
        if (navigator.clipboard) { navigator.clipboard.writeText(text); }
        button.setAttribute("data-copied", "1");
      });
    });
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
