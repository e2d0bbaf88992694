// LedgerX console: GraphQL over HTTP and graphql-transport-ws, and the signed-in session.
// The access token lives only in memory; the refresh token is the HttpOnly cookie the API sets
// (path /graphql), so a reload restores the session with refreshSession() and no argument.

export class ApiError extends Error {
  constructor(errors) {
    const list = Array.isArray(errors) && errors.length ? errors : [{ message: "request failed" }];
    super(list.map((e) => e.message).join("; "));
    const ext = (list[0] && list[0].extensions) || {};
    this.name = "ApiError";
    this.code = ext.code || "ERROR";
    this.field = ext.field || null;
    this.errors = list;
  }
}

const USER_FIELDS = "user { id email isPlatformAdmin }";
const LOG_IN = `mutation($i: LogInInput!) { logIn(input: $i) { accessToken expiresIn ${USER_FIELDS} } }`;
const REFRESH = `mutation { refreshSession { accessToken expiresIn ${USER_FIELDS} } }`;
const LOG_OUT = `mutation { logOut }`;

let token = null;
let user = null;
let refreshing = null;
const listeners = new Set();

async function post(query, variables, withToken) {
  const headers = { "content-type": "application/json", accept: "application/json" };
  if (withToken && token) headers.authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch("/graphql", {
      method: "POST",
      headers,
      body: JSON.stringify({ query, variables }),
      credentials: "same-origin",
    });
  } catch (e) {
    throw new ApiError([{ message: `network error: ${e.message}`, extensions: { code: "NETWORK" } }]);
  }
  let body;
  try {
    body = await res.json();
  } catch (e) {
    throw new ApiError([{ message: `HTTP ${res.status}`, extensions: { code: "HTTP_" + res.status } }]);
  }
  if (body.errors && body.errors.length) throw new ApiError(body.errors);
  return body.data;
}

function setSession(auth) {
  const before = user;
  token = auth ? auth.accessToken : null;
  user = auth ? auth.user : null;
  if (before !== user) for (const fn of [...listeners]) {
    try { fn(user); } catch (e) { console.error(e); }
  }
}

// One refresh at a time, whoever asks (concurrent requests that all saw UNAUTHENTICATED), and
// one at a time across this browser's tabs: each spends the single refresh cookie, and two tabs
// spending the same one at once look like a stolen token to the server, which then ends the whole
// session. Under the lock a tab always spends the cookie the previous one was given.
function spendCookie() {
  const spend = () => post(REFRESH, {}, false);
  return navigator.locks ? navigator.locks.request("ledgerx-refresh", spend) : spend();
}

function refresh() {
  if (!refreshing) {
    refreshing = spendCookie()
      .then((data) => { setSession(data.refreshSession); return true; })
      .catch(() => { setSession(null); return false; })
      .finally(() => { refreshing = null; });
  }
  return refreshing;
}

export async function gql(query, variables = {}) {
  try {
    return await post(query, variables, true);
  } catch (e) {
    if (!(e instanceof ApiError) || e.code !== "UNAUTHENTICATED" || !user) throw e;
    if (!(await refresh())) throw e;
    return post(query, variables, true);
  }
}

export function getUser() { return user; }
export function getToken() { return token; }
export function onSessionChange(fn) { listeners.add(fn); return () => listeners.delete(fn); }

export async function signIn(email, password) {
  const data = await post(LOG_IN, { i: { email, password } }, false);
  setSession(data.logIn);
  return user;
}

export async function signOut() {
  closeSocket();
  try { await post(LOG_OUT, {}, false); } catch (e) { /* the cookie may be gone already */ }
  setSession(null);
}

// On page load: spend the HttpOnly refresh cookie (if any) for an access token.
export async function restoreSession() {
  await refresh();
  return user;
}

export const session = { getUser, onSessionChange, signIn, signOut, restoreSession };

// ------------------------------------------------------------------------------------------
// graphql-transport-ws (https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md)
// ------------------------------------------------------------------------------------------
class GraphQLWs {
  constructor(url, params, onClose) {
    this.url = url;
    this.params = params;
    this.onClose = onClose;
    this.sinks = new Map();
    this.nextId = 1;
    this.ws = null;
  }

  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url, "graphql-transport-ws");
      this.ws = ws;
      let acked = false;
      const timer = setTimeout(() => { if (!acked) ws.close(4408, "connection_ack timeout"); }, 10000);
      ws.onopen = () => this.send({ type: "connection_init", payload: this.params });
      ws.onmessage = (event) => {
        let msg;
        try { msg = JSON.parse(event.data); } catch (e) { ws.close(4400, "invalid message"); return; }
        switch (msg.type) {
          case "connection_ack": acked = true; clearTimeout(timer); resolve(this); break;
          case "ping": this.send({ type: "pong" }); break;
          case "pong": break;
          case "next": { const s = this.sinks.get(msg.id); if (s) s.next(msg.payload); break; }
          case "error": { const s = this.sinks.get(msg.id); this.sinks.delete(msg.id); if (s) s.error(msg.payload); break; }
          case "complete": { const s = this.sinks.get(msg.id); this.sinks.delete(msg.id); if (s) s.complete(); break; }
          default: ws.close(4400, "unexpected message type");
        }
      };
      ws.onclose = (event) => {
        clearTimeout(timer);
        if (!acked) reject(new Error(`connection refused (${event.code} ${event.reason || ""})`.trim()));
        const sinks = [...this.sinks.values()];
        this.sinks.clear();
        for (const s of sinks) s.error([{ message: "connection closed", extensions: { code: "CLOSED", closeCode: event.code } }]);
        if (acked && this.onClose) this.onClose(event);
      };
    });
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  subscribe(query, variables, sink) {
    const id = String(this.nextId++);
    this.sinks.set(id, sink);
    this.send({ id, type: "subscribe", payload: { query, variables } });
    return () => { if (this.sinks.delete(id)) this.send({ id, type: "complete" }); };
  }

  get idle() { return this.sinks.size === 0; }

  // Closing on purpose (sign-out, a new token) tells the live sinks, so their subscriptions
  // start again on a new socket when there is still a session.
  close() {
    this.onClose = null;
    const sinks = [...this.sinks.values()];
    this.sinks.clear();
    if (this.ws) this.ws.close(1000, "bye");
    for (const s of sinks) s.error([{ message: "connection closed", extensions: { code: "CLOSED", closeCode: 1000 } }]);
  }
}

let socket = null; // Promise<GraphQLWs>

function closeSocket() {
  const s = socket;
  socket = null;
  if (s) s.then((c) => c.close(), () => {});
}

function openSocket() {
  if (!socket) {
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/graphql`;
    const client = new GraphQLWs(url, { authorization: `Bearer ${token}` }, () => { if (socket === p) socket = null; });
    const p = client.connect();
    p.catch(() => { if (socket === p) socket = null; });
    socket = p;
  }
  return socket;
}

onSessionChange(() => closeSocket());

// subscribe(query, variables, onNext) -> unsubscribe(). onNext(data, error): data is the
// payload's `data` (null on error); error an ApiError when the stream ended with one. The
// subscription survives dropped sockets (reconnects with backoff) and an expired access token
// (refreshes once, then resubscribes); unsubscribe() ends it for good.
export function subscribe(query, variables, onNext) {
  let stopped = false;
  let stop = null;
  let retries = 0;
  let timer = null;

  const again = (delay) => {
    if (stopped) return;
    timer = setTimeout(start, delay);
  };

  const fail = async (errors) => {
    const err = new ApiError(errors);
    if (err.code === "CLOSED") { again(Math.min(30000, 500 * 2 ** retries++)); return; }
    if (err.code === "UNAUTHENTICATED" && user && retries < 3) {
      retries++;
      if (await refresh()) { again(0); return; }
    }
    if (!stopped) onNext(null, err);
  };

  async function start() {
    if (stopped || !token) return;
    let client;
    try {
      client = await openSocket();
    } catch (e) {
      again(Math.min(30000, 500 * 2 ** retries++));
      return;
    }
    if (stopped) return;
    stop = client.subscribe(query, variables, {
      next: (payload) => {
        if (payload.errors && payload.errors.length) { stop = null; fail(payload.errors); return; }
        retries = 0;
        if (!stopped) onNext(payload.data, null);
      },
      error: (errors) => { stop = null; fail(errors); },
      complete: () => { stop = null; },
    });
  }

  start();
  return () => {
    stopped = true;
    clearTimeout(timer);
    if (stop) stop();
    stop = null;
  };
}
