// Weather: each station publishes its current reading retained on
// weather/<station>/current (a new page gets it at once) and every reading on
// weather/<station>/readings. A card per station; a live chart of the readings.

import { drawChart } from "./chart.js";
import { connect, h } from "./connect.js";

const COLORS = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2"];
const stations = new Map();
const sb = connect();

sb.subscribe("weather/+/current").on("message", (m) => {
  const id = m.topic.split("/")[1];
  station(id).current = m.data;
  render();
});
sb.subscribe("weather/+/readings").on("message", (m) => {
  const s = station(m.topic.split("/")[1]);
  s.temps.push(Number(m.data?.temp_c) || 0);
  s.temps.splice(0, s.temps.length - 120);
  s.current = m.data;
  render();
});

function station(id) {
  if (!stations.has(id)) stations.set(id, { temps: [], current: null, color: COLORS[stations.size % COLORS.length] });
  return stations.get(id);
}

let frame = 0;
function render() {
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    const sorted = [...stations].sort(([a], [b]) => a.localeCompare(b));
    document.getElementById("stations").replaceChildren(
      ...sorted.map(([id, s]) =>
        h(
          "div",
          { class: "card", "data-station": id },
          h("div", { class: "muted" }, id),
          h("b", {}, `${s.current?.temp_c ?? "–"} °C`),
          h("div", {}, `humidity ${s.current?.humidity ?? "–"} % · wind ${s.current?.wind_ms ?? "–"} m/s`),
        ),
      ),
    );
    drawChart(document.getElementById("chart"), sorted.map(([, s]) => ({ values: s.temps, color: s.color })));
    document.getElementById("legend").replaceChildren(
      ...sorted.map(([id, s]) => {
        const key = h("span", {}, `■ ${id}  `);
        key.style.color = s.color; // through the CSSOM: the CSP allows no style attributes
        return key;
      }),
    );
  });
}
