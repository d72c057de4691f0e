// The demo page: submit jobs, give each a row, let layerq.js keep the rows current.
(function () {
  "use strict";

  var form = document.getElementById("submit-form");
  var rows = document.getElementById("jobs");
  var empty = document.getElementById("empty");
  var formError = document.getElementById("form-error");
  var connection = document.getElementById("connection");
  var csrfToken = form.querySelector("[name=csrfmiddlewaretoken]").value;

  var labels = {
    connecting: "connecting…",
    open: "live",
    closed: "reconnecting…",
    unauthenticated: "not logged in: reload the page",
  };

  function showOutcome(row, job) {
    var cell = row.querySelector(".job-outcome");
    if (job.status === "succeeded") {
      cell.className = "job-outcome ok";
      // One line, with the spaces JSON.stringify leaves out, so it wraps between values.
      cell.textContent = JSON.stringify(job.result, null, 1).replace(/\n\s*/g, " ");
    } else if (job.status === "failed" && job.error) {
      cell.className = "job-outcome failed";
      cell.textContent = job.error.type + ": " + job.error.message;
    } else {
      cell.className = "job-outcome";
      cell.textContent = "";
    }
  }

  // Ask the server for a job's record: after a reload, and after a reconnect,
  // since events sent while the socket was down are not replayed.
  function refresh(row) {
    var url = rows.dataset.detailUrl.replace("JOB_ID", row.dataset.jobId);
    return fetch(url, { credentials: "same-origin" })
      .then(function (response) {
        return response.ok ? response.json() : null;
      })
      .then(function (job) {
        if (job) client.update(job);
      })
      .catch(function () {
        /* the socket will bring the news */
      });
  }

  function track(row) {
    layerq.track(row.dataset.jobId, row.querySelector(".job-progress"), {
      client: client,
      onUpdate: function (job) {
        showOutcome(row, job);
      },
    });
  }

  function addRow(id, type) {
    var row = document.createElement("tr");
    row.className = "job";
    row.dataset.jobId = id;
    row.dataset.jobType = type;
    row.innerHTML =
      '<td class="job-name"><code></code><br><small></small></td>' +
      '<td class="job-progress"></td><td class="job-outcome"></td>';
    row.querySelector("code").textContent = type;
    row.querySelector("small").textContent = id.slice(0, 8);
    rows.insertBefore(row, rows.firstChild);
    empty.hidden = true;
    track(row);
    return row;
  }

  var client = layerq.connect({
    onState: function (state) {
      connection.dataset.state = state;
      connection.textContent = labels[state] || state;
    },
    onOpen: function () {
      rows.querySelectorAll("tr.job").forEach(function (row) {
        var job = client.job(row.dataset.jobId);
        if (!job || layerq.TERMINAL.indexOf(job.status) === -1) refresh(row);
      });
    },
  });

  rows.querySelectorAll("tr.job").forEach(track);

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var button = event.submitter;
    var body = {
      kind: button ? button.value : "render",
      steps: parseInt(form.elements.steps.value, 10),
      pause: parseFloat(form.elements.pause.value),
    };
    formError.textContent = "";
    fetch(form.dataset.url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken },
      body: JSON.stringify(body),
    })
      .then(function (response) {
        return response.json().then(function (data) {
          if (!response.ok) throw new Error(data.error || response.statusText);
          addRow(data.id, data.type);
        });
      })
      .catch(function (err) {
        formError.textContent = err.message;
      });
  });
})();
