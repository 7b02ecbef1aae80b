// The race view (pages/6_Race.py): draws the frames the race WebSocket streams (core/app/race/server.py)
// and sends the keys back over the same socket. Nothing here goes through Streamlit's reruns except
// one trigger when the race finishes, so the page can show the scores.
//
// Streamlit calls the default export again whenever the page reruns, with the same parentElement;
// one RaceView lives per element and is rebuilt only when the race (its token) changes.

const KEY_BITS = {
  ArrowLeft: 1, KeyA: 1,
  ArrowRight: 2, KeyD: 2,
  ArrowUp: 4, KeyW: 4,
  ArrowDown: 8, KeyS: 8,
};
const PAUSE_KEYS = new Set(["KeyP", "Escape"]);
const NEVER_CONNECTED_RETRIES = 5; // failed first connections (about 8 s of retries) before the view says it cannot
const DRIVING = new Set(["countdown", "running", "paused"]); // the statuses in which the race takes the keys
const FINAL_CLOSE_CODES = new Set([4403, 4409, 4410, 1008]); // bad token, replaced, race closed, junk
// (4408, "nothing heard from the page", is not final: the page was only frozen or offline, so it reconnects.)
const OUTCOME_TEXT = { lap: "lap complete", "off-track": "off the map", time: "time up", ended: "ended" };
const views = new WeakMap();

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text; // textContent: names are never parsed as HTML
  return node;
}

function isTyping(event) {
  const target = event.composedPath ? event.composedPath()[0] : event.target;
  if (!target || !target.tagName) return false;
  const tag = target.tagName.toLowerCase();
  return tag === "input" || tag === "textarea" || tag === "select" || target.isContentEditable;
}

class RaceView {
  constructor(parent, data, setTriggerValue) {
    this.parent = parent;
    this.data = data;
    this.token = data.token;
    this.setTriggerValue = setTriggerValue;
    this.mask = 0;
    this.held = new Set(); // codes of the driving keys held down: A and ArrowLeft both steer left
    this.seq = 0;
    this.frames = 0;
    this.drawn = -1;
    this.status = "connecting";
    this.closed = false;
    this.retries = 0;
    this.everReady = false;
    this.finishedAttempt = 0;
    this.build();
    this.onKeyDown = (e) => this.key(e, true);
    this.onKeyUp = (e) => this.key(e, false);
    // Another tab or window takes the keyboard: let go of every key and pause, so the race does not run
    // on (and get scored) with nobody at the wheel.
    this.onBlur = () => this.leave();
    // A hidden page's timers are throttled by the browser, so the server must not read its silence as a lost
    // network: say so (the server pauses the race), and say so again when it is back.
    this.onVisibility = () => {
      this.send({ type: "visibility", hidden: document.hidden });
      if (document.hidden) this.leave();
    };
    window.addEventListener("keydown", this.onKeyDown, true);
    window.addEventListener("keyup", this.onKeyUp, true);
    window.addEventListener("blur", this.onBlur);
    document.addEventListener("visibilitychange", this.onVisibility);
    // Say "still here" even with no key pressed: a network that drops without closing the socket then shows
    // on the server within a second or two, which pauses the race (send() skips it while not connected).
    // It also says how many frames it has read on this socket, so a socket that stops delivering shows too.
    this.heartbeat = setInterval(() => this.send({ type: "ping", frames: this.socketFrames }),
      this.data.heartbeat_ms || 250);
    this.connect();
  }

  build() {
    const root = el("div", "race");
    root.dataset.frames = "0";
    root.dataset.status = "connecting";
    const stage = el("div", "stage");
    const viewsRow = el("div", "views");
    this.cars = this.data.labels.map((label, i) => {
      const view = el("div", "view");
      const canvas = el("canvas");
      canvas.width = 96;
      canvas.height = 96;
      const hud = el("div", "hud");
      const name = el("span", "name", label);
      const score = el("span", "score", "0.0");
      hud.append(name, score);
      const foot = el("div", "foot");
      const tiles = el("span", "tiles", "tiles 0");
      const clock = el("span", "clock", "0.0 s");
      foot.append(tiles, clock);
      const done = el("div", "done");
      view.append(canvas, hud, foot, done);
      viewsRow.append(view);
      return { canvas, ctx: canvas.getContext("2d"), score, tiles, clock, done, kind: this.data.kinds[i] };
    });
    this.banner = el("div", "banner", "");
    stage.append(viewsRow, this.banner);
    const bar = el("div", "bar");
    this.message = el("span", "message", "Connecting…");
    const buttons = el("span", "buttons");
    this.pauseButton = el("button", "pause", "Pause (P)");
    this.pauseButton.type = "button";
    this.pauseButton.onclick = () => this.send({ type: "toggle_pause" });
    const restart = el("button", "restart", "Restart");
    restart.type = "button";
    restart.onclick = () => this.send({ type: "restart" });
    const end = el("button", "end", "End race");
    end.type = "button";
    end.onclick = () => this.send({ type: "end" });
    buttons.append(this.pauseButton, restart, end);
    this.buttons = buttons;
    bar.append(this.message, buttons);
    const help = el("div", "help", this.data.mode === "watch"
      ? "The AI drives. P or Esc pauses."
      : "Steer with ← → or A D, gas ↑ or W, brake ↓ or S. P or Esc pauses.");
    root.append(stage, bar, help);
    this.root = root;
    this.parent.append(root);
  }

  // The socket's URL: ws_path is relative, resolved against the page as Streamlit resolves its own assets
  // ("./static/..."). A page is served at <base>/<page> (or at <base>/, the default page), so this gives
  // <base>/api/race/ws under any path prefix: server.baseUrlPath, or a proxy's such as Community Cloud's
  // /~/+/. From the site root (/api/race/ws) the socket would miss the app behind such a proxy.
  socketUrl() {
    const url = new URL(this.data.ws_path, document.baseURI);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.search = "";
    url.hash = "";
    return url;
  }

  connect() {
    if (this.closed) return;
    const url = this.socketUrl();
    const ws = new WebSocket(url.href);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.socketFrames = 0;
    ws.onopen = () => ws.send(JSON.stringify({ type: "hello", token: this.token }));
    ws.onmessage = (event) => {
      if (typeof event.data === "string") this.control(JSON.parse(event.data));
      else this.frame(event.data);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ready = false;
      this.root.dataset.connected = "false";
      if (this.closed) return;
      if (FINAL_CLOSE_CODES.has(event.code)) {
        this.setStatus("closed", event.reason || "This race is over.");
        return;
      }
      this.retries += 1;
      const delay = Math.min(5000, 250 * 2 ** Math.min(this.retries, 5));
      if (!this.everReady && this.retries >= NEVER_CONNECTED_RETRIES) {
        // Not one connection in all this time: something between the browser and the app (a proxy that
        // does not pass WebSockets, say) blocks the race's socket. Keep trying, but say so.
        this.setStatus("reconnecting", `The race cannot reach the server (${url.pathname}): a proxy or ` +
          "firewall may be blocking WebSockets. Still trying…");
      } else {
        this.setStatus("reconnecting", "Connection lost: the race is paused. Reconnecting…");
      }
      this.banner.textContent = "PAUSED";
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }

  control(msg) {
    if (msg.type === "ready") {
      this.ready = true;
      this.everReady = true;
      this.retries = 0;
      this.root.dataset.connected = "true";
      if (document.hidden) this.send({ type: "visibility", hidden: true });
      this.send({ type: "keys", mask: this.mask, seq: ++this.seq });
    } else if (msg.type === "error") {
      this.setStatus("closed", msg.message);
    }
  }

  frame(buffer) {
    const bytes = new Uint8Array(buffer);
    const length = (bytes[1] << 8) | bytes[2];
    const head = JSON.parse(new TextDecoder().decode(bytes.subarray(3, 3 + length)));
    let at = 3 + length;
    this.frames += 1;
    this.socketFrames += 1;
    this.root.dataset.frames = String(this.frames);
    this.root.dataset.step = String(head.step);
    this.root.dataset.ack = String(head.ack);
    head.sizes.forEach((size, i) => {
      const png = bytes.slice(at, at + size);
      at += size;
      const car = this.cars[i];
      createImageBitmap(new Blob([png], { type: "image/png" })).then((bitmap) => {
        if (head.v >= (car.version || 0)) {
          car.version = head.v;
          car.ctx.drawImage(bitmap, 0, 0);
        }
        bitmap.close();
      });
    });
    head.drivers.forEach((d, i) => {
      const car = this.cars[i];
      car.score.textContent = d.score.toFixed(1);
      car.tiles.textContent = `tiles ${d.tiles}/${d.total}` + (d.skipped ? ` · ${d.skipped} skipped` : "");
      car.tiles.title = d.skipped ? "A skipped tile must still be driven over: the lap ends only once every tile is visited." : "";
      car.clock.textContent = `${(d.steps / 50).toFixed(1)} s`;
      car.done.textContent = d.done ? OUTCOME_TEXT[d.outcome] || d.outcome : "";
    });
    this.root.dataset.score = String(head.drivers[0].score);
    this.show(head);
  }

  show(head) {
    let banner = "";
    let message = "";
    if (head.status === "countdown") {
      banner = String(Math.max(1, Math.ceil(head.countdown)));
      message = "Get ready…";
    } else if (head.status === "running") {
      banner = head.step < 40 && head.attempt ? "GO!" : "";
      message = `Racing · ${(head.step / 50).toFixed(1)} s of ${(head.max_steps / 50).toFixed(0)} s`;
    } else if (head.status === "paused") {
      banner = "PAUSED";
      message = head.reason === "disconnected" ? "Paused: the connection dropped. Press P to go on."
        : head.reason === "hidden" ? "Paused while the page was in the background. Press P to go on."
        : "Paused. Press P or Resume to go on.";
    } else if (head.status === "finished") {
      banner = "FINISH";
      message = "Race over: the scores are below.";
    }
    this.banner.textContent = banner;
    this.pauseButton.textContent = head.status === "paused" ? "Resume (P)" : "Pause (P)";
    this.buttons.hidden = head.status === "finished";
    this.setStatus(head.status, message);
    if (head.status === "finished" && this.finishedAttempt !== head.attempt) {
      this.finishedAttempt = head.attempt;
      this.held.clear();
      this.setMask(0);
      if (this.setTriggerValue) this.setTriggerValue("finished", `${this.token.slice(0, 8)}-${head.attempt}`);
    }
  }

  setStatus(status, message) {
    this.status = status;
    this.root.dataset.status = status;
    if (message !== undefined) this.message.textContent = message;
  }

  leave() {
    this.held.clear();
    this.setMask(0);
    if (this.status === "countdown" || this.status === "running") this.send({ type: "pause" });
  }

  key(event, down) {
    if (this.closed || isTyping(event)) return;
    const bit = KEY_BITS[event.code];
    if (bit !== undefined && !down && this.held.delete(event.code)) { // a release always lets go
      this.setMask(this.maskOfHeld());
      return;
    }
    // Only while the race is on, and never a shortcut (Ctrl+P prints, Cmd+S saves): once it is over the
    // arrow keys scroll the page and seek the video again.
    if (!DRIVING.has(this.status) || event.ctrlKey || event.metaKey || event.altKey) return;
    if (bit !== undefined && this.data.mode !== "watch") {
      event.preventDefault();
      event.stopPropagation();
      if (down) this.held.add(event.code);
      this.setMask(this.maskOfHeld());
    } else if (PAUSE_KEYS.has(event.code)) {
      event.preventDefault();
      event.stopPropagation();
      if (down && !event.repeat) this.send({ type: "toggle_pause" });
    }
  }

  maskOfHeld() {
    let mask = 0;
    for (const code of this.held) mask |= KEY_BITS[code];
    return mask;
  }

  setMask(mask) {
    if (mask === this.mask) return;
    this.mask = mask;
    this.root.dataset.mask = String(mask);
    this.send({ type: "keys", mask, seq: ++this.seq });
  }

  send(msg) {
    if (this.ws && this.ready && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  destroy() {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.heartbeat);
    window.removeEventListener("keydown", this.onKeyDown, true);
    window.removeEventListener("keyup", this.onKeyUp, true);
    window.removeEventListener("blur", this.onBlur);
    document.removeEventListener("visibilitychange", this.onVisibility);
    if (this.ws) this.ws.close(1000, "left the page");
    this.root.remove();
  }
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  let view = views.get(parentElement);
  if (!view || view.token !== data.token) {
    if (view) view.destroy();
    view = new RaceView(parentElement, data, setTriggerValue);
    views.set(parentElement, view);
  }
  return () => {
    view.destroy();
    views.delete(parentElement);
  };
}
