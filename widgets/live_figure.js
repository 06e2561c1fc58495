// The page side of widgets.live_figure.LiveFigure: draws the model's state, which is always the
// whole current figure, with Plotly.react, in the width of its output area (and follows its resizing).
//
// plotly.js comes once per page from the Jupyter server (widgets.server_extension): never from the
// kernel, which is busy while a cell trains, and never inside a model's state (5 MB states were lost
// on reloads). Where no Jupyter server serves it (another front end) the page asks the kernel.
// anywidget gives each model 2 s to load and initialize, and evaluating plotly.js is one long task
// (about a second on a busy laptop), so it starts after a quiet spell in which no figure model was
// created, and initialize() never waits for it.
const KEY = Symbol.for("workbench.plotly.js");
const QUIET_MS = 2500; // longer than anywidget's 2 s wait
const URL_PATH = "workbench/static/plotly.min.js"; // widgets.server_extension.URL_PATH
const TYPED = {
  float64: Float64Array, float32: Float32Array, int32: Int32Array, int16: Int16Array, int8: Int8Array,
  uint32: Uint32Array, uint16: Uint16Array, uint8: Uint8Array,
};

async function fromServer() {
  const config = document.getElementById("jupyter-config-data");
  if (!config) throw new Error("not a Jupyter server page");
  const base = (JSON.parse(config.textContent).baseUrl ?? "/").replace(/\/?$/, "/");
  const url = new URL(base + URL_PATH, location.origin).href;
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.text();
}

function fromKernel(model) {
  return new Promise((resolve) => {
    const answer = (msg) => {
      if (msg?.type !== "plotly.js") return;
      model.off("msg:custom", answer);
      resolve(msg.code);
    };
    model.on("msg:custom", answer);
    model.send({ type: "plotly.js?" });
  });
}

function evaluate(code) {
  // plotly.min.js is a UMD bundle: handed a CommonJS `module`, it exports Plotly there
  const module = { exports: {} };
  new Function("module", "exports", "define", code)(module, module.exports, undefined);
  return module.exports;
}

function loadPlotly(model) {
  const shared = (globalThis[KEY] ??= {});
  shared.promise ??= new Promise((resolve) => { shared.start = resolve; });
  if (shared.start) { // not loading yet: a new figure restarts the quiet spell
    clearTimeout(shared.timer);
    shared.timer = setTimeout(() => {
      shared.start(fromServer()
        .catch((error) => {
          console.info(`workbench: plotly.js from the kernel (${error.message})`);
          return fromKernel(model);
        })
        .then(evaluate));
      shared.start = null;
    }, QUIET_MS);
  }
  return shared.promise;
}

function decode(value) {
  // plotly's serializer sends a 1-d numeric numpy array as {buffer: DataView, dtype, shape}
  if (Array.isArray(value)) return value.map(decode);
  if (value instanceof DataView) return value;
  if (value && typeof value === "object") {
    const Typed = TYPED[value.dtype];
    if (Typed && value.buffer instanceof DataView && Array.isArray(value.shape)) {
      const view = value.buffer; // copied: a typed array needs an aligned offset
      return new Typed(view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength));
    }
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, decode(v)]));
  }
  return value === "_undefined_" ? undefined : value;
}

function figure(model) {
  const layout = decode(model.get("_widget_layout")) ?? {};
  delete layout.width; // the output area's width decides
  return {
    data: decode(model.get("_widget_data")) ?? [],
    layout: { ...layout, autosize: true, uirevision: layout.uirevision ?? "keep zoom across updates" },
    config: { responsive: true, displaylogo: false, ...(decode(model.get("_config")) ?? {}) },
  };
}

export default {
  initialize({ model }) {
    loadPlotly(model);
  },
  render({ model, el }) {
    el.classList.add("wb-live-figure");
    Object.assign(el.style, { width: "100%", minWidth: "0" });
    const plot = document.createElement("div");
    plot.style.minHeight = `${model.get("_widget_layout")?.height ?? 300}px`;
    el.appendChild(plot);
    let Plotly = null;
    let frame = 0;
    let drawn = false;
    const draw = () => {
      frame = 0;
      if (!Plotly || !el.offsetWidth) return; // hidden (another tab): drawn when it is shown
      Plotly.react(plot, figure(model));
      drawn = true;
    };
    const later = () => { frame ||= requestAnimationFrame(draw); };
    const resized = () => {
      if (!drawn) later();
      else if (el.offsetWidth) Plotly.Plots.resize(plot).catch(() => {});
    };
    const observer = new ResizeObserver(resized);
    observer.observe(el);
    const events = ["change:_widget_data", "change:_widget_layout", "change:_config"];
    for (const event of events) model.on(event, later);
    loadPlotly(model).then(
      (module) => { Plotly = module; draw(); },
      (error) => { plot.textContent = `plotly.js could not be loaded: ${error.message}`; },
    );
    return () => {
      observer.disconnect();
      for (const event of events) model.off(event, later);
      cancelAnimationFrame(frame);
      if (Plotly) Plotly.purge(plot);
    };
  },
};
