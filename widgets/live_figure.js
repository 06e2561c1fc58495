// The browser side of widgets.live_figure.LiveFigure: plotly's own FigureWidget code, evaluated once
// per page, and never while anywidget is waiting for a model.
//
// anywidget gives each model 2 s to import its module and initialize. Stock FigureWidget's module
// is plotly.js whole (5 MB), evaluated once per figure: on a busy 2-core laptop one evaluation
// takes longer, and while it runs (one long task) every other model waits too. A model that
// misses the 2 s logs "[anywidget] Failed to initialize model." and drops every later update from
// Python. This module is small and its initialize() returns at once; plotly's module is asked of
// one figure by a message (never part of a model's state: a reload restores all states at once,
// and 5 MB ones were lost), evaluated once, after a quiet spell in which no figure model was
// created (so no model's 2 s run during that long task), and the updates that arrived meanwhile
// are replayed to it.
const KEY = Symbol.for("workbench.plotly-figure-widget");
const QUIET_MS = 2500;  // longer than anywidget's 2 s wait
// the model attributes plotly's FigureModel reacts to (its initialize() listens to these)
const MESSAGES = ["_widget_data", "_widget_layout", "_py2js_addTraces", "_py2js_deleteTraces",
  "_py2js_moveTraces", "_py2js_restyle", "_py2js_relayout", "_py2js_update", "_py2js_animate",
  "_py2js_removeLayoutProps", "_py2js_removeTraceProps"];

function askForModule(model) {
  return new Promise((resolve) => {
    const answer = (msg) => {
      if (msg?.type !== "plotly-module") return;
      model.off("msg:custom", answer);
      resolve(msg.code);
    };
    model.on("msg:custom", answer);
    model.send({ type: "plotly-module?" });
  });
}

function plotlyWidgetModule(model) {
  const shared = (globalThis[KEY] ??= {});
  if (!shared.promise) {
    shared.promise = new Promise((resolve) => { shared.start = resolve; });
  }
  if (shared.start) {  // not evaluated yet: a new figure restarts the quiet spell
    clearTimeout(shared.timer);
    shared.timer = setTimeout(() => {
      shared.start(askForModule(model).then((code) => {
        const url = URL.createObjectURL(new Blob([code], { type: "text/javascript" }));
        return import(/* webpackIgnore: true */ url).finally(() => URL.revokeObjectURL(url));
      }));
      shared.start = null;
    }, QUIET_MS);
  }
  return shared.promise;
}

export default () => {
  let plotly = null;  // plotly's {initialize, render} for this model, once loaded
  let loaded = null;
  return {
    initialize({ model }) {
      const early = [];  // [name, value] of updates that came before plotly was ready
      for (const name of MESSAGES) {
        model.on(`change:${name}`, () => { if (!plotly) early.push([name, model.get(name)]); });
      }
      loaded = plotlyWidgetModule(model).then((module) => {
        const widget = module.default();
        widget.initialize({ model });
        plotly = widget;
        for (const [name, value] of early) {  // the same change events, now that plotly listens
          model.set(name, value);
          if (name.startsWith("_py2js_")) model.set(name, null);  // a message, as Python sends it
        }
      });
    },
    async render({ model, el }) {
      await loaded;
      return plotly.render({ model, el });
    },
  };
};
