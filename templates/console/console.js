// The console's progressive enhancement: the offer form's preview follows what is typed.
// Without this script the form's "Preview" button shows the same thing.
(function () {
  "use strict";
  var form = document.getElementById("offer-form");
  var target = document.getElementById("offer-preview");
  if (!form || !target || !window.fetch) { return; }
  var url = form.getAttribute("data-preview-url");
  var timer = null;
  var latest = 0;

  function query() {
    var params = new URLSearchParams();
    new FormData(form).forEach(function (value, name) {
      if (name !== "csrf_token" && name !== "action") { params.append(name, value); }
    });
    return params.toString();
  }

  function refresh() {
    var ticket = ++latest;
    fetch(url + "?" + query(), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.text(); })
      .then(function (html) {
        if (ticket === latest) {
          target.innerHTML = html;
          form.setAttribute("data-preview-ready", String(ticket));
        }
      })
      .catch(function () { /* keep the last preview; the Preview button still works */ });
  }

  function later() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 300);
  }

  form.addEventListener("input", later);
  form.addEventListener("change", later);
})();
