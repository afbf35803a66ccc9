// A hand-drawn line chart on a canvas: a few series over the same x steps, scaled to
// the largest value shown. Enough for "messages per second"; no library to vendor.

/** Draws `series` ([{ values: number[], color }]) into `canvas`, newest value at the right. */
export function drawChart(canvas, series, points = 60) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.clientHeight || canvas.height;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const top = Math.max(1, ...series.flatMap((s) => s.values));
  const pad = 34;
  g.strokeStyle = "#dde1e6";
  g.fillStyle = "#68727f";
  g.font = "11px system-ui, sans-serif";
  for (const f of [0, 0.5, 1]) {
    const y = pad / 2 + (height - pad) * (1 - f);
    g.beginPath();
    g.moveTo(pad, y);
    g.lineTo(width, y);
    g.stroke();
    g.fillText(formatRate(top * f), 0, y + 4);
  }
  const step = (width - pad) / Math.max(1, points - 1);
  for (const { values, color } of series) {
    const shown = values.slice(-points);
    const x0 = width - step * (shown.length - 1);
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    shown.forEach((v, i) => {
      const y = pad / 2 + (height - pad) * (1 - v / top);
      if (i === 0) g.moveTo(x0 + i * step, y);
      else g.lineTo(x0 + i * step, y);
    });
    g.stroke();
  }
}

function formatRate(v) {
  return v >= 1000 ? `${(v / 1000).toFixed(1)}k` : v >= 10 || v === 0 ? String(Math.round(v)) : v.toFixed(1);
}
