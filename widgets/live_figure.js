// The browser side of widgets.live_figure.LiveFigure: plotly's own FigureWidget code, loaded once per
// page and never while anywidget is waiting.
//
// anywidget gives a model's initialize() 2 s; plotly's widget module is plotly.js whole (5 MB),
// which takes longer to evaluate on a busy 2-core laptop, and stock FigureWidget evaluates it once
// per figure. A model that misses the 2 s logs "[anywidget] Failed to initialize model." and
// drops every later update from Python. Here initialize() only starts the load (shared by every
// figure on the page), and the updates that arrive before plotly is ready are replayed to it.
const KEY = Symbol.for("workbench.plotly-figure-widget");
const PLOTLY_WIDGET = __PLOTLY_WIDGET__;  // plotly's widgetbundle.js, as a string (Python fills it in)
// the model attributes plotly's FigureModel reacts to (its initialize() listens to these)
const MESSAGES = ["_widget_data", "_widget_layout", "_py2js_addTraces", "_py2js_deleteTraces",
  "_py2js_moveTraces", "_py2js_restyle", "_py2js_relayout", "_py2js_update", "_py2js_animate",
  "_py2js_removeLayoutProps", "_py2js_removeTraceProps"];

function plotlyWidgetModule() {
  if (!globalThis[KEY]) {
    const url = URL.createObjectURL(new Blob([PLOTLY_WIDGET], { type: "text/javascript" }));
    globalThis[KEY] = import(/* webpackIgnore: true */ url).finally(() => URL.revokeObjectURL(url));
  }
  return globalThis[KEY];
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
      loaded = plotlyWidgetModule().then((module) => {
        const widget = module.default();
        widget.initialize({ model });
        plotly = widget;
        for (const [name, value] of early) {  // the same change events, now that plotly listens
          model.set(name, value);
          if (name.startsWith("_py2js_")) model.set(name, null);  // a message, as Python sends it
        }
      });
      // not awaited: anywidget would time out waiting for plotly.js
    },
    async render({ model, el }) {
      await loaded;
      return plotly.render({ model, el });
    },
  };
};
