// The live event stream: a WebSocket to /api/events that reconnects with backoff; while it is
// not open the app polls instead (see app.js).

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 8000;

/**
 * new EventStream({url: () => string, onEvent(evt), onState(state)})
 * state: 'connecting' | 'live' | 'reconnecting' | 'stopped'
 */
export class EventStream {
  constructor({url, onEvent, onState}) {
    this.url = url;
    this.onEvent = onEvent;
    this.onState = onState;
    this.socket = null;
    this.attempt = 0;
    this.timer = null;
    this.stopped = true;
    this.state = 'stopped';
  }

  start() {
    this.stopped = false;
    this.attempt = 0;
    this.connect();
  }

  /** Drop the current socket and connect again at once (e.g. after a new token). */
  restart() {
    this.stop();
    this.start();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.socket) {
      const s = this.socket;
      this.socket = null;
      s.onopen = s.onclose = s.onerror = s.onmessage = null;
      try { s.close(); } catch { /* already closed */ }
    }
    this.setState('stopped');
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.onState(state);
  }

  connect() {
    if (this.stopped) return;
    this.setState(this.attempt === 0 ? 'connecting' : 'reconnecting');
    let socket;
    try {
      socket = new WebSocket(this.url());
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      this.attempt = 0;
      this.setState('live');
    };
    socket.onmessage = (msg) => {
      let evt;
      try {
        evt = JSON.parse(msg.data);
      } catch {
        return; // not ours; ignore
      }
      if (evt && typeof evt === 'object' && typeof evt.type === 'string') this.onEvent(evt);
    };
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.scheduleReconnect();
    };
    socket.onerror = () => { /* onclose follows */ };
  }

  scheduleReconnect() {
    if (this.stopped) return;
    this.attempt += 1;
    this.setState('reconnecting');
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (this.attempt - 1));
    const delay = base / 2 + Math.random() * base / 2;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }
}
