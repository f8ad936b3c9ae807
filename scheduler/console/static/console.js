/* 平安短信 console: charts from data attributes and the upload progress bar. No build step. */
(function () {
  "use strict";
  function quotaChart(canvas) {
    var d = JSON.parse(canvas.dataset.chart);
    new Chart(canvas, {
      data: {
        labels: d.labels,
        datasets: [
          {
            type: "bar", label: "已发", data: d.actual, order: 2,
            backgroundColor: d.laggard.map(function (l) { return l ? "#d92d20" : "#2e90fa"; })
          },
          {
            type: "line", label: "目标", data: d.target, order: 1, borderColor: "#1f2933",
            borderDash: [6, 4], pointRadius: 0, fill: false, stepped: "middle"
          }
        ]
      },
      options: { animation: false, responsive: true, maintainAspectRatio: false,
        plugins: { legend: { position: "bottom" } } }
    });
  }
  function deliveryChart(canvas) {
    var d = JSON.parse(canvas.dataset.delivery);
    new Chart(canvas, {
      type: "bar",
      data: {
        labels: d.labels,
        datasets: [
          { label: "已发送", data: d.sent, backgroundColor: "#84caff" },
          { label: "已送达", data: d.delivered, backgroundColor: "#12b76a" },
          { label: "失败", data: d.failed, backgroundColor: "#d92d20" }
        ]
      },
      options: { animation: false, responsive: true, maintainAspectRatio: false,
        plugins: { legend: { position: "bottom" } } }
    });
  }
  function start() {
    if (window.Chart) {
      document.querySelectorAll("canvas.quota-chart").forEach(quotaChart);
      document.querySelectorAll("canvas[data-delivery]").forEach(deliveryChart);
    }
    var form = document.getElementById("upload");
    if (form) {
      var bar = document.getElementById("upload-progress");
      form.addEventListener("htmx:xhr:progress", function (evt) {
        if (evt.detail.lengthComputable) {
          bar.value = Math.round(evt.detail.loaded / evt.detail.total * 100);
        }
      });
      form.addEventListener("htmx:afterRequest", function () { bar.value = 100; });
    }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
