// The page: a target, a predicted distribution you drag or pick, and the losses it gets.
(() => {
  const N = NTL.VALUES.length;
  const state = { target: 4, p: [], sigma: 0 };

  const PRESETS = {
    right: (y) => peaked(y),
    neighbour: (y) => peaked(y < N - 1 ? y + 1 : y - 1),
    far: (y) => peaked(y <= (N - 1) / 2 ? N - 1 : 0),
    bimodal: () => NTL.VALUES.map((v) => (v === 0 || v === 8 ? 0.5 : 0)),
    uniform: () => NTL.VALUES.map(() => 1 / N),
  };

  // 91% on one digit, the rest spread evenly.
  function peaked(i) {
    return NTL.VALUES.map((v, j) => (j === i ? 0.91 : 0.01));
  }

  // Set p_i to `value` and rescale the others so that the total stays 1.
  function setProbability(i, value) {
    const v = Math.min(1, Math.max(0, value));
    const rest = state.p.reduce((a, b, j) => a + (j === i ? 0 : b), 0);
    state.p = state.p.map((pj, j) => {
      if (j === i) return v;
      return rest > 0 ? (pj * (1 - v)) / rest : (1 - v) / (N - 1);
    });
  }

  const svg = document.getElementById("bars");
  const W = 500, H = 240, PAD = 30, SLOT = (W - 2 * PAD) / N, TOP = 10, BASE = H - 30;
  const ns = "http://www.w3.org/2000/svg";

  function el(name, attrs, parent) {
    const node = document.createElementNS(ns, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    parent.appendChild(node);
    return node;
  }

  function drawBars(q) {
    svg.replaceChildren();
    el("line", { x1: PAD, x2: W - PAD, y1: BASE, y2: BASE, class: "axis" }, svg);
    for (let i = 0; i < N; i++) {
      const x = PAD + i * SLOT;
      const h = state.p[i] * (BASE - TOP);
      el("rect", { x: x + 6, y: BASE - h, width: SLOT - 12, height: Math.max(h, 0.5),
                   class: i === state.target ? "bar target" : "bar", "data-digit": i }, svg);
      if (q[i] > 0 && state.sigma > 0) {
        const qy = BASE - q[i] * (BASE - TOP);
        el("line", { x1: x + 2, x2: x + SLOT - 2, y1: qy, y2: qy, class: "soft" }, svg);
      }
      const label = el("text", { x: x + SLOT / 2, y: H - 10,
                                 class: i === state.target ? "digit target" : "digit" }, svg);
      label.textContent = String(NTL.VALUES[i]);
      const pct = el("text", { x: x + SLOT / 2, y: BASE - h - 4, class: "pct" }, svg);
      pct.textContent = state.p[i] >= 0.005 ? (100 * state.p[i]).toFixed(0) + "%" : "";
    }
  }

  function fmt(x) {
    return Number.isFinite(x) ? x.toFixed(4) : "∞";
  }

  function render() {
    const q = NTL.softTarget(state.target, state.sigma);
    const values = NTL.losses(state.p, state.target, state.sigma);
    drawBars(q);
    for (const [name, value] of Object.entries(values)) {
      const cell = document.querySelector(`[data-loss="${name}"]`);
      cell.textContent = fmt(value);
      cell.dataset.value = Number.isFinite(value) ? String(value) : "Infinity";
    }
    document.getElementById("distribution").dataset.p = JSON.stringify(state.p);
    document.getElementById("sigma-value").textContent = state.sigma.toFixed(1);
    document.getElementById("target").value = String(state.target);
  }

  function pick(preset) {
    state.p = PRESETS[preset](state.target);
    render();
  }

  // Dragging: the pointer's column picks the digit, its height the probability.
  function fromPointer(event) {
    const box = svg.getBoundingClientRect();
    const x = ((event.clientX - box.left) / box.width) * W;
    const y = ((event.clientY - box.top) / box.height) * H;
    const i = Math.floor((x - PAD) / SLOT);
    if (i < 0 || i >= N) return;
    setProbability(i, (BASE - y) / (BASE - TOP));
    render();
  }

  let dragging = false;
  svg.addEventListener("pointerdown", (e) => {
    dragging = true;
    svg.setPointerCapture(e.pointerId);
    fromPointer(e);
  });
  svg.addEventListener("pointermove", (e) => dragging && fromPointer(e));
  svg.addEventListener("pointerup", () => (dragging = false));
  svg.addEventListener("pointercancel", () => (dragging = false));

  const target = document.getElementById("target");
  for (const v of NTL.VALUES) {
    const option = document.createElement("option");
    option.value = option.textContent = String(v);
    target.appendChild(option);
  }
  target.addEventListener("change", () => {
    state.target = Number(target.value);
    render();
  });
  document.getElementById("sigma").addEventListener("input", (e) => {
    state.sigma = Number(e.target.value);
    render();
  });
  for (const button of document.querySelectorAll("[data-preset]")) {
    button.addEventListener("click", () => pick(button.dataset.preset));
  }
  document.getElementById("show-minima").addEventListener("click", () => {
    state.target = 4;
    pick("bimodal");
  });

  state.p = PRESETS.neighbour(state.target);
  render();
})();
