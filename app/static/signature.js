/* The signature pad of the offer flow (/o/<token>/sign): draw with a finger, pen or mouse
   (pointer events), and the drawing is posted as a PNG data URL in the hidden
   "signature_png" field. Without JavaScript the choice to draw is never shown and the
   typed Full name is the signature. No inline script: the CSP allows only this file. */
(function () {
  "use strict";

  var form = document.querySelector("[data-signature-form]");
  if (!form) return;
  var choice = form.querySelector("[data-signature-choice]");
  var pad = form.querySelector("[data-signature-pad]");
  var canvas = form.querySelector("[data-signature-canvas]");
  var field = form.querySelector("input[name='signature_png']");
  var clear = form.querySelector("[data-signature-clear]");
  if (!choice || !pad || !canvas || !field || !clear) return;
  if (!canvas.getContext || !window.PointerEvent) return; // typed signatures only

  var context = canvas.getContext("2d");
  var MAX_RATIO = 2; // enough for a crisp line; keeps the PNG well under the 200 KB limit
  var LINE_WIDTH = 2.5; // in CSS pixels
  var drawing = false;
  var inked = false;
  var sized = false;
  var last = null;

  function mode() {
    var checked = form.querySelector("input[name='signature_method']:checked");
    return checked ? checked.value : "typed";
  }

  // Size the bitmap to the box as laid out (this also clears it).
  function reset() {
    var ratio = Math.min(window.devicePixelRatio || 1, MAX_RATIO);
    var box = canvas.getBoundingClientRect();
    canvas.width = Math.max(1, Math.round(box.width * ratio));
    canvas.height = Math.max(1, Math.round(box.height * ratio));
    context.lineWidth = LINE_WIDTH * ratio;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.strokeStyle = "#1b1f24";
    context.fillStyle = "#1b1f24";
    inked = false;
    field.value = "";
    sized = box.width > 0;
  }

  function show() {
    var drawn = mode() === "drawn";
    pad.hidden = !drawn;
    if (drawn && !sized) reset();
  }

  // A pointer position in bitmap pixels, whatever the box's size on screen.
  function point(event) {
    var box = canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) * canvas.width) / (box.width || 1),
      y: ((event.clientY - box.top) * canvas.height) / (box.height || 1),
    };
  }

  function save() {
    field.value = inked ? canvas.toDataURL("image/png") : "";
  }

  canvas.addEventListener("pointerdown", function (event) {
    if (event.button > 0) return; // only the main button, a finger or a pen
    event.preventDefault();
    if (canvas.setPointerCapture) canvas.setPointerCapture(event.pointerId);
    drawing = true;
    last = point(event);
    context.beginPath();
    context.arc(last.x, last.y, context.lineWidth / 2, 0, Math.PI * 2);
    context.fill();
    inked = true;
  });

  canvas.addEventListener("pointermove", function (event) {
    if (!drawing) return;
    event.preventDefault();
    var events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    if (!events.length) events = [event];
    context.beginPath();
    context.moveTo(last.x, last.y);
    for (var i = 0; i < events.length; i += 1) {
      last = point(events[i]);
      context.lineTo(last.x, last.y);
    }
    context.stroke();
  });

  function end() {
    if (!drawing) return;
    drawing = false;
    save();
  }
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  canvas.addEventListener("lostpointercapture", end);

  clear.addEventListener("click", function () {
    reset();
    canvas.focus();
  });

  window.addEventListener("resize", function () {
    // A new size clears the pad: only while nothing is drawn.
    if (!pad.hidden && !inked) reset();
  });

  var radios = form.querySelectorAll("input[name='signature_method']");
  for (var i = 0; i < radios.length; i += 1) radios[i].addEventListener("change", show);

  form.addEventListener("submit", function () {
    if (mode() === "drawn") save();
    else field.value = ""; // a typed signature posts no picture
  });

  choice.hidden = false;
  show();
})();
