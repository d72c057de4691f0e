/*
 * layerq.js: live job events in the browser, from layerq's JobEventsConsumer.
 * No dependencies, no build step; include it with
 *   <script src="{% static 'layerq/layerq.js' %}"></script>
 * and use window.layerq.
 *
 * The server sends one JSON message per job event:
 *   {"event": KIND, "job": {id, type, channel, attempt, status, progress, message, result, error}}
 * KIND is started, progress, retrying, succeeded or failed; a job object carries
 * only the fields its event knows (error is {type, message}). The client merges
 * them into one state per job id, so a late `track()` still sees what came before.
 *
 * const client = layerq.connect(options)      open (and keep open) the websocket
 *   options.url         "/ws/jobs/" (default); relative to the page, ws/wss follows http/https
 *   options.onEvent     (kind, job, raw) => {}  every event; job is the merged state
 *   options.onState     (state) => {}           "connecting" | "open" | "closed" | "unauthenticated"
 *   options.onOpen      ({reconnected}) => {}   each (re)connection; fetch what was missed here
 *   options.backoff     {initial: 500, max: 15000} reconnect delays in ms (doubling, jittered)
 *   The first client made becomes the default one (layerq.client).
 * client.on(jobId, (kind, job) => {})  per-job callback; returns a function that removes it
 * client.update(job, kind = "record")  merge a job object from elsewhere (e.g. a JSON view)
 * client.job(jobId)                    the merged state of a job, or undefined
 * client.close()                       close and stop reconnecting
 *
 * layerq.track(jobId, element, options)  render a <progress> bar and status text for the job
 *   inside element and keep them current; returns a function that stops tracking.
 *   options.client    the client (default: layerq.client, connected on first use)
 *   options.onUpdate  (job, kind) => {}  after each render, e.g. to show job.result
 * layerq.render(element, job)            draw a job state once (what track() calls)
 * layerq.TERMINAL                        ["succeeded", "failed", "cancelled"]
 *
 * Markup made by render(): <div class="layerq-job" data-status="running">
 *   <progress class="layerq-progress" max="1" value="0.5"> <span class="layerq-status">
 * A running job without progress yet gets an indeterminate bar (no value).
 *
 * Close code 4401 means the websocket had no authenticated user: the client
 * reports "unauthenticated" and does not retry. Any other close is retried.
 */
(function (global) {
  "use strict";

  var TERMINAL = ["succeeded", "failed", "cancelled"];
  var CLOSE_UNAUTHENTICATED = 4401;
  var MAX_JOBS = 500; // job states kept per client; the oldest go first

  function isTerminal(status) {
    return TERMINAL.indexOf(status) !== -1;
  }

  function socketUrl(url) {
    if (/^wss?:\/\//.test(url)) return url;
    var resolved = new URL(url, global.location.href);
    resolved.protocol = resolved.protocol === "https:" ? "wss:" : "ws:";
    return resolved.href;
  }

  function call(fn, args) {
    if (typeof fn !== "function") return;
    try {
      fn.apply(null, args);
    } catch (err) {
      // One broken callback must not stop the others or the connection.
      if (global.console) global.console.error("layerq callback failed", err);
    }
  }

  // Merge an incoming job object into the state we hold, never going back in time:
  // a terminal status sticks (unless a later attempt starts), and progress
  // within one attempt only grows, whatever order events and fetches arrive in.
  function merge(state, job, kind) {
    if (!state) {
      state = { id: job.id, status: "queued", attempt: 0, progress: null };
    }
    var attempt = typeof job.attempt === "number" ? job.attempt : state.attempt;
    var newer = attempt > state.attempt;
    if (isTerminal(state.status) && !newer) return state;
    if (attempt < state.attempt) return state;
    var next = {};
    var key;
    for (key in state) next[key] = state[key];
    if (newer && kind !== "record") {
      next.progress = null;
      next.message = null;
    }
    for (key in job) {
      if (job[key] === undefined) continue;
      if (key === "progress" && !newer && job.progress !== null && next.progress !== null &&
          job.progress < next.progress) continue;
      next[key] = job[key];
    }
    next.attempt = attempt;
    if (kind === "succeeded" || next.status === "succeeded") next.progress = 1;
    if (kind === "started" || kind === "progress") next.error = null;
    return next;
  }

  function Client(options) {
    options = options || {};
    this.url = socketUrl(options.url || "/ws/jobs/");
    this.options = options;
    this.backoff = options.backoff || {};
    this.jobs = new Map();
    this.listeners = new Map();
    this.failures = 0;
    this.opened = false;
    this.closed = false;
    this.state = "closed";
    this.socket = null;
    this.timer = null;
    this._connect();
  }

  Client.prototype._setState = function (state) {
    this.state = state;
    call(this.options.onState, [state]);
  };

  Client.prototype._connect = function () {
    var self = this;
    if (self.closed) return;
    self._setState("connecting");
    var socket = new WebSocket(self.url);
    self.socket = socket;
    socket.onopen = function () {
      var reconnected = self.opened;
      self.opened = true;
      self.failures = 0;
      self._setState("open");
      call(self.options.onOpen, [{ reconnected: reconnected }]);
    };
    socket.onmessage = function (message) {
      var data;
      try {
        data = JSON.parse(message.data);
      } catch (err) {
        return; // not ours
      }
      if (data && typeof data.event === "string" && data.job && data.job.id) {
        self._dispatch(data.event, data.job, data);
      }
    };
    socket.onclose = function (event) {
      if (self.socket !== socket) return;
      self.socket = null;
      if (event.code === CLOSE_UNAUTHENTICATED) {
        self.closed = true;
        self._setState("unauthenticated");
        return;
      }
      self._setState("closed");
      if (self.closed) return;
      var initial = self.backoff.initial || 500;
      var ceiling = Math.min(self.backoff.max || 15000, initial * Math.pow(2, self.failures));
      self.failures += 1;
      // Half fixed, half random: clients dropped together do not return together.
      var delay = ceiling / 2 + Math.random() * (ceiling / 2);
      self.timer = global.setTimeout(function () {
        self.timer = null;
        self._connect();
      }, delay);
    };
  };

  Client.prototype._dispatch = function (kind, job, raw) {
    var state = merge(this.jobs.get(job.id), job, kind);
    this.jobs.delete(job.id); // re-insert: Map order is our age order
    this.jobs.set(job.id, state);
    if (this.jobs.size > MAX_JOBS) {
      var oldest = this.jobs.keys().next().value;
      if (!this.listeners.has(oldest)) this.jobs.delete(oldest);
    }
    call(this.options.onEvent, [kind, state, raw]);
    var listeners = this.listeners.get(job.id);
    if (listeners) {
      listeners.slice().forEach(function (fn) {
        call(fn, [kind, state]);
      });
    }
    return state;
  };

  Client.prototype.update = function (job, kind) {
    if (!job || !job.id) throw new TypeError("layerq: update() needs a job with an id");
    return this._dispatch(kind || "record", job, null);
  };

  Client.prototype.job = function (jobId) {
    return this.jobs.get(jobId);
  };

  Client.prototype.on = function (jobId, fn) {
    var listeners = this.listeners.get(jobId);
    if (!listeners) {
      listeners = [];
      this.listeners.set(jobId, listeners);
    }
    listeners.push(fn);
    var self = this;
    return function off() {
      var index = listeners.indexOf(fn);
      if (index !== -1) listeners.splice(index, 1);
      if (!listeners.length) self.listeners.delete(jobId);
    };
  };

  Client.prototype.close = function () {
    this.closed = true;
    if (this.timer !== null) global.clearTimeout(this.timer);
    var socket = this.socket;
    this.socket = null;
    if (socket) socket.close(1000);
    this._setState("closed");
  };

  function percent(progress) {
    return Math.round(progress * 100) + " %";
  }

  function statusText(job) {
    var error = job.error ? job.error.type + ": " + job.error.message : "";
    switch (job.status) {
      case "running":
        var parts = ["running"];
        if (job.progress !== null && job.progress !== undefined) parts.push(percent(job.progress));
        if (job.message) parts.push(job.message);
        return parts.join(" \u00b7 ");
      case "retrying":
        return "retrying after attempt " + job.attempt + (error ? " (" + error + ")" : "");
      case "failed":
        return "failed" + (error ? ": " + error : "");
      default:
        return job.status;
    }
  }

  function render(element, job) {
    var box = element.querySelector(".layerq-job");
    if (!box) {
      box = document.createElement("div");
      box.className = "layerq-job";
      var bar = document.createElement("progress");
      bar.className = "layerq-progress";
      bar.max = 1;
      var text = document.createElement("span");
      text.className = "layerq-status";
      text.setAttribute("aria-live", "polite");
      box.appendChild(bar);
      box.appendChild(text);
      element.appendChild(box);
    }
    var progress = box.querySelector(".layerq-progress");
    var hasProgress = job.progress !== null && job.progress !== undefined;
    if (hasProgress) {
      progress.value = job.progress;
    } else if (job.status === "running") {
      progress.removeAttribute("value"); // indeterminate: working, amount unknown
    } else {
      progress.value = 0;
    }
    progress.setAttribute("aria-label", "job " + job.id + " progress");
    box.setAttribute("data-status", job.status);
    box.querySelector(".layerq-status").textContent = statusText(job);
  }

  var api = {
    TERMINAL: TERMINAL.slice(),
    client: null,
    Client: Client,
    connect: function (options) {
      var client = new Client(options);
      if (!api.client) api.client = client;
      return client;
    },
    render: render,
    track: function (jobId, element, options) {
      options = options || {};
      var client = options.client || api.client || api.connect();
      function draw(kind, job) {
        render(element, job);
        call(options.onUpdate, [job, kind]);
      }
      draw("track", client.job(jobId) || { id: jobId, status: "queued", attempt: 0, progress: null });
      return client.on(jobId, draw);
    },
  };

  global.layerq = api;
})(window);
